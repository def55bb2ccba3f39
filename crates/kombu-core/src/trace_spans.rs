//! OpenTelemetry spans (the `opentelemetry` feature): a producer span per
//! publish, whose context the message carries as `traceparent`, and a
//! consumer span per delivery, child of the context the message brought.
//!
//! Spans come from the global tracer provider (`opentelemetry::global`),
//! so they cost nothing until the application installs an SDK. Attribute
//! names are OpenTelemetry's messaging semantic conventions.

use std::borrow::Cow;

use opentelemetry::global::{self, BoxedSpan};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};

use crate::error::Result;
use crate::message::{Delivery, RawMessage};
use crate::trace::TraceContext;

/// The instrumentation scope's name.
const TRACER: &str = "kombu-rs";

/// `messaging.system`: the semantic conventions' name where they have one
/// (`rabbitmq`, `aws_sqs`), else the transport's name.
fn messaging_system(transport: &'static str) -> &'static str {
    match transport {
        "amqp" => "rabbitmq",
        "sqs" => "aws_sqs",
        other => other,
    }
}

/// The OpenTelemetry form of a message's trace context (a remote parent).
fn span_context_of(ctx: &TraceContext) -> SpanContext {
    SpanContext::new(
        TraceId::from(ctx.trace_id()),
        SpanId::from(ctx.parent_id()),
        TraceFlags::new(ctx.flags()),
        true,
        ctx.tracestate()
            .and_then(|state| state.parse::<TraceState>().ok())
            .unwrap_or_default(),
    )
}

/// The W3C form of a span's context; `None` for an invalid (no-op) span.
fn trace_context_of(span: &SpanContext) -> Option<TraceContext> {
    let ctx = TraceContext::new(
        u128::from_be_bytes(span.trace_id().to_bytes()),
        u64::from_be_bytes(span.span_id().to_bytes()),
        span.is_sampled(),
    )?;
    let state = span.trace_state().header();
    Some(ctx.clone().with_tracestate(&state).unwrap_or(ctx))
}

/// The context a message brought, as a parent; `None` when it has none.
fn remote_parent(message: &RawMessage) -> Option<Context> {
    let ctx = TraceContext::from_headers(&message.headers)?;
    Some(Context::new().with_remote_span_context(span_context_of(&ctx)))
}

/// Attributes every span of a message has.
fn message_attributes(
    transport: &'static str,
    operation: (&'static str, &'static str),
    destination: &str,
    message: &RawMessage,
) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("messaging.system", messaging_system(transport)),
        KeyValue::new("messaging.operation.type", operation.0),
        KeyValue::new("messaging.operation.name", operation.1),
        KeyValue::new("messaging.destination.name", destination.to_owned()),
        KeyValue::new("messaging.message.body.size", message.body.len() as i64),
    ];
    if let Some(id) = &message.properties.message_id {
        attributes.push(KeyValue::new("messaging.message.id", id.clone()));
    }
    if let Some(id) = &message.properties.correlation_id {
        attributes.push(KeyValue::new(
            "messaging.message.conversation_id",
            id.clone(),
        ));
    }
    attributes
}

/// The span of one publish.
pub(crate) struct PublishSpan(BoxedSpan);

impl PublishSpan {
    /// Start the producer span of publishing `message` to `exchange` with
    /// `routing_key`, child of the `traceparent` the message already has
    /// (set with [`PublishOptions::trace_context`](crate::PublishOptions::trace_context))
    /// or else of the current context, and write the span's own context
    /// into the message's headers.
    pub(crate) fn start(
        transport: &'static str,
        exchange: &str,
        routing_key: &str,
        message: &mut RawMessage,
    ) -> Self {
        let destination = if exchange.is_empty() {
            routing_key
        } else {
            exchange
        };
        let mut attributes =
            message_attributes(transport, ("send", "publish"), destination, message);
        if transport == "amqp" && !routing_key.is_empty() {
            attributes.push(KeyValue::new(
                "messaging.rabbitmq.destination.routing_key",
                routing_key.to_owned(),
            ));
        }
        let parent = remote_parent(message).unwrap_or_else(Context::current);
        let tracer = global::tracer(TRACER);
        let span = tracer
            .span_builder(Cow::Owned(format!("publish {destination}")))
            .with_kind(SpanKind::Producer)
            .with_attributes(attributes)
            .start_with_context(&tracer, &parent);
        if let Some(ctx) = trace_context_of(span.span_context()) {
            ctx.write_headers(&mut message.headers);
        }
        PublishSpan(span)
    }

    /// End the span with the publish's outcome.
    pub(crate) fn end(mut self, outcome: &Result<()>) {
        if let Err(err) = outcome {
            self.0.set_status(Status::error(err.to_string()));
        }
        self.0.end();
    }
}

/// The span of one delivery, from its arrival until it is settled (or
/// the message dropped).
pub(crate) struct DeliverySpan(Context);

impl DeliverySpan {
    /// Start the consumer span of processing `delivery` from `queue`,
    /// child of the context the message brought (else of the current one).
    pub(crate) fn start(transport: &'static str, queue: &str, delivery: &Delivery) -> Self {
        let message = &delivery.message;
        let attributes = message_attributes(transport, ("process", "process"), queue, message);
        let parent = remote_parent(message).unwrap_or_else(Context::current);
        let tracer = global::tracer(TRACER);
        let span = tracer
            .span_builder(Cow::Owned(format!("process {queue}")))
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes)
            .start_with_context(&tracer, &parent);
        DeliverySpan(parent.with_span(span))
    }

    /// The context holding the span (for the application's own spans).
    pub(crate) fn context(&self) -> &Context {
        &self.0
    }

    /// The message was settled (`ack`, `reject`, `requeue`) with `outcome`:
    /// record it and end the span.
    pub(crate) fn settled(&self, how: &'static str, outcome: &Result<()>) {
        let span = self.0.span();
        span.add_event(how, Vec::new());
        if let Err(err) = outcome {
            span.set_status(Status::error(err.to_string()));
        }
        span.end();
    }
}

impl Drop for DeliverySpan {
    fn drop(&mut self) {
        // Ends the span if it was not settled (a second end is ignored).
        self.0.span().end();
    }
}
