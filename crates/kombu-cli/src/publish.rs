//! `kombu publish`: declare, then publish BODY `--count` times.

use std::io::Read;
use std::time::Instant;

use kombu::serialization::Payload;
use kombu::{Binding, DeliveryMode, Exchange, Producer, PublishOptions, Queue};
use serde_json::Value;

use crate::cli::{ExchangeArgs, PublishArgs};
use crate::connect;
use crate::failure::{Failure, Outcome};

/// The body as given: the argument, or stdin for `-`.
fn read_body(arg: &str) -> Outcome<Vec<u8>> {
    if arg != "-" {
        return Ok(arg.as_bytes().to_vec());
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .map_err(|err| Failure::usage(format!("cannot read BODY from stdin: {err}")))?;
    Ok(bytes)
}

/// What to send for one message: text that parses as JSON is sent as
/// JSON (or the chosen serializer), other text as text, bytes that are
/// not UTF-8 as raw bytes. `--serializer text` or `raw` sends the text as is.
pub fn payload_of(bytes: &[u8], serializer: Option<&str>) -> Payload {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Payload::from(bytes.to_vec());
    };
    if matches!(serializer, Some("text") | Some("raw")) {
        return Payload::from(text);
    }
    match serde_json::from_str::<Value>(text) {
        Ok(value) => Payload::Value(value),
        Err(_) => Payload::from(text),
    }
}

/// BODY with `{i}` replaced by `index` (only in UTF-8 bodies).
fn body_for(template: &[u8], index: u64) -> std::borrow::Cow<'_, [u8]> {
    match std::str::from_utf8(template) {
        Ok(text) if text.contains("{i}") => {
            text.replace("{i}", &index.to_string()).into_bytes().into()
        }
        _ => template.into(),
    }
}

/// A header value: JSON when it parses as JSON, else the string.
pub fn header_value(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

/// The exchange named by `--exchange` and `--type` (the default exchange without one).
pub fn exchange_of(args: &ExchangeArgs) -> Exchange {
    match &args.exchange {
        Some(name) if !name.is_empty() => Exchange::new(name.clone(), args.kind),
        _ => Exchange::default_exchange(),
    }
}

/// `queue` bound to `exchange` with `binding_key` and `--binding-arg`s
/// (no binding on the default exchange, which routes by queue name).
pub fn queue_of(name: &str, exchange: &Exchange, binding_key: &str, args: &ExchangeArgs) -> Queue {
    let queue = Queue::new(name);
    if exchange.is_default() {
        return queue;
    }
    let mut binding = Binding::new(exchange.name.clone(), binding_key);
    for (key, value) in &args.binding_args {
        binding = binding.argument(key.clone(), header_value(value));
    }
    // `bind` records the exchange so declaring the queue declares it too.
    let mut queue = queue.bind(exchange, binding_key);
    queue.bindings.clear();
    queue.binding(binding)
}

fn publish_options(args: &PublishArgs, routing_key: &str) -> PublishOptions {
    let mut options = PublishOptions::new()
        .routing_key(routing_key)
        .mandatory(args.mandatory);
    if let Some(serializer) = &args.serializer {
        options = options.serializer(serializer.clone());
    }
    if let Some(compression) = &args.compression {
        options = options.compression(compression.clone());
    }
    for (key, value) in &args.headers {
        options = options.header(key.clone(), header_value(value));
    }
    if let Some(priority) = args.priority {
        options = options.priority(priority);
    }
    if let Some(mode) = args.delivery_mode.and_then(DeliveryMode::from_u8) {
        options = options.delivery_mode(mode);
    }
    if let Some(ttl) = args.expiration {
        options = options.expiration(ttl);
    }
    if let Some(delay) = args.delay {
        options = options.delay(delay);
    }
    options
}

/// Run `kombu publish`.
pub async fn run(args: &PublishArgs) -> Outcome {
    let exchange = exchange_of(&args.exchange);
    let routing_key = match (&args.routing_key, &args.queue, &args.exchange.binding_key) {
        (Some(rk), _, _) => rk.clone(),
        (None, Some(_), Some(bk)) if !exchange.is_default() => bk.clone(),
        (None, Some(queue), _) => queue.clone(),
        (None, None, _) => String::new(),
    };
    if exchange.is_default() && routing_key.is_empty() {
        return Err(Failure::usage(
            "nothing to publish to: give --queue, --routing-key or --exchange",
        ));
    }
    let template = read_body(&args.body)?;
    let conn = connect::open(&args.broker).await?;
    let result = tokio::select! {
        result = publish(&conn, args, exchange.clone(), &routing_key, &template) => result,
        _ = crate::consume::interrupted() => Err(Failure::interrupted("publish interrupted")),
    };
    let _ = conn.close().await;
    let (sent, elapsed) = result?;
    let target = if exchange.is_default() {
        format!("queue {routing_key:?} (default exchange)")
    } else {
        format!(
            "exchange {:?} ({}) with routing key {routing_key:?}",
            exchange.name, exchange.kind
        )
    };
    eprintln!(
        "published {sent} message{} to {target} on {} in {:.1} ms",
        if sent == 1 { "" } else { "s" },
        connect::display_url(&args.broker),
        elapsed.as_secs_f64() * 1000.0
    );
    Ok(())
}

async fn publish(
    conn: &kombu::Connection,
    args: &PublishArgs,
    exchange: Exchange,
    routing_key: &str,
    template: &[u8],
) -> Outcome<(u64, std::time::Duration)> {
    let producer = Producer::new(conn).exchange(exchange.clone());
    let channel = producer.channel().await?;
    if let Some(name) = &args.queue {
        let binding_key = args
            .exchange
            .binding_key
            .clone()
            .unwrap_or_else(|| routing_key.to_owned());
        queue_of(name, &exchange, &binding_key, &args.exchange)
            .declare(channel.as_ref())
            .await?;
    }
    let serializer = args.serializer.as_deref();
    let fixed = (!String::from_utf8_lossy(template).contains("{i}"))
        .then(|| payload_of(template, serializer));
    let start = Instant::now();
    for index in 0..args.count {
        let payload = match &fixed {
            Some(payload) => payload.clone(),
            None => payload_of(&body_for(template, index), serializer),
        };
        producer
            .publish(payload, publish_options(args, routing_key))
            .await
            .map_err(|err| {
                Failure::failed(format!(
                    "publishing message {} of {}: {err}",
                    index + 1,
                    args.count
                ))
            })?;
    }
    Ok((args.count, start.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_are_values_and_other_text_is_text() {
        assert_eq!(
            payload_of(br#"{"n": 1}"#, None),
            Payload::Value(serde_json::json!({"n": 1}))
        );
        assert_eq!(payload_of(b"hello", None), Payload::Text("hello".into()));
        assert_eq!(payload_of(b"42", Some("text")), Payload::Text("42".into()));
        assert_eq!(payload_of(&[0xff, 0], None), Payload::from(vec![0xffu8, 0]));
    }

    #[test]
    fn index_placeholders_are_replaced() {
        assert_eq!(&*body_for(br#"{"n": {i}}"#, 7), br#"{"n": 7}"#);
        assert_eq!(&*body_for(b"plain", 7), b"plain");
    }

    #[test]
    fn header_values_are_json_when_they_parse() {
        assert_eq!(header_value("3"), Value::from(3));
        assert_eq!(header_value("true"), Value::from(true));
        assert_eq!(header_value("abc"), Value::from("abc"));
    }
}
