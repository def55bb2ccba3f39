//! [`AmqpChannel`]: kombu's channel as a native AMQP channel. The broker
//! routes, keeps unacked messages and redelivers them; this only maps types.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use kombu_core::spi::async_trait;
use kombu_core::{
    Arguments, Binding, Channel, Delivery, DeliveryStream, Error, ErrorKind, Exchange,
    ExchangeType, Queue, QueueInfo, RawMessage, Result,
};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::ShortString;
use lapin::{Confirmation, ExchangeKind};

use crate::config::Settings;
use crate::delayed;
use crate::errors::{op, LinkState};
use crate::field_table::{short_string, to_field_table};
use crate::properties::{no_arguments, to_basic_properties};
use crate::publish_sync::{PublishSync, Tracked};
use crate::quarantine::{receive, HeldDeliveries};
use crate::transport::Link;

/// One AMQP channel. Closing or dropping it makes the broker requeue the
/// messages it holds unacked.
pub struct AmqpChannel {
    tracked: Arc<Tracked>,
    sync: Arc<PublishSync>,
    link: Arc<Link>,
    /// Publishes wait for the broker's confirm (on with `confirm_publish`,
    /// and from the first `mandatory` publish on).
    confirming: AtomicBool,
    confirm_select: tokio::sync::Mutex<()>,
    settings: Settings,
    /// Unsettled deliveries of queues with a quarantine, for a reject.
    held: Arc<HeldDeliveries>,
}

impl fmt::Debug for AmqpChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpChannel")
            .field("id", &self.tracked.channel.id())
            .field("open", &self.is_open())
            .field("confirming", &self.confirming.load(Ordering::Relaxed))
            .finish()
    }
}

fn name(what: &str, text: &str) -> Result<ShortString> {
    short_string(what, text)
}

fn exchange_kind(kind: ExchangeType) -> ExchangeKind {
    match kind {
        ExchangeType::Direct => ExchangeKind::Direct,
        ExchangeType::Topic => ExchangeKind::Topic,
        ExchangeType::Fanout => ExchangeKind::Fanout,
        ExchangeType::Headers => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.as_str().to_owned()),
    }
}

impl AmqpChannel {
    pub(crate) async fn new(
        channel: lapin::Channel,
        link: Arc<Link>,
        sync: Arc<PublishSync>,
        settings: Settings,
    ) -> Result<Self> {
        let this = AmqpChannel {
            tracked: sync.track(channel, settings.ack_coalescing),
            sync,
            link,
            confirming: AtomicBool::new(false),
            confirm_select: tokio::sync::Mutex::new(()),
            settings,
            held: Arc::default(),
        };
        if settings.confirm_publish {
            this.enable_confirms().await?;
        }
        Ok(this)
    }

    /// An error when the channel is closed: a lost connection's is a
    /// [`ErrorKind::ConnectionLost`] (the message's ack cannot reach the
    /// broker, which delivers it again).
    fn check_open(&self, operation: &str) -> Result<()> {
        if self.is_open() {
            return Ok(());
        }
        let (kind, why) = match self.link.state() {
            LinkState::Lost => (ErrorKind::ConnectionLost, "the connection was lost"),
            LinkState::Closed => (ErrorKind::Closed, "the connection was closed"),
            LinkState::Up => (ErrorKind::ChannelClosed, "the channel is closed"),
        };
        Err(Error::new(kind, format!("{operation}: {why}")))
    }

    /// An error when the connection is known lost or closed (lapin may not
    /// know yet when a heartbeat check found the broker silent).
    fn check_link(&self, operation: &str) -> Result<()> {
        match self.link.state() {
            LinkState::Up => Ok(()),
            LinkState::Lost => Err(Error::new(
                ErrorKind::ConnectionLost,
                format!("{operation}: the connection was lost"),
            )),
            LinkState::Closed => Err(Error::new(
                ErrorKind::Closed,
                format!("{operation}: the connection was closed"),
            )),
        }
    }

    /// The lapin channel, for what kombu's API does not cover.
    pub fn lapin_channel(&self) -> &lapin::Channel {
        &self.tracked.channel
    }

    fn channel(&self) -> &lapin::Channel {
        &self.tracked.channel
    }

    /// Send the acks this channel holds back (in-order acks wait a few
    /// milliseconds to go out as one multiple-ack) now. Closing the channel
    /// or the connection, a reject, a cancel or a qos do it too.
    pub async fn flush_acks(&self) -> Result<()> {
        self.tracked.acks.flush().await
    }

    /// True when publishes on this channel wait for the broker's confirm.
    pub fn confirms_enabled(&self) -> bool {
        self.confirming.load(Ordering::Acquire)
    }

    /// Put the channel in confirm mode: from now on every publish returns
    /// once the broker has confirmed it (and fails on a nack).
    pub async fn enable_confirms(&self) -> Result<()> {
        if self.confirms_enabled() {
            return Ok(());
        }
        let _guard = self.confirm_select.lock().await;
        if !self.confirms_enabled() {
            self.tracked
                .channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(self.link.op("confirm.select"))?;
            self.confirming.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Publish `message` as it is (no delay).
    async fn publish_now(
        &self,
        message: RawMessage,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
    ) -> Result<()> {
        if mandatory {
            // RabbitMQ sends basic.return before the confirm of the same
            // message: waiting for the confirm tells whether it was routed.
            self.enable_confirms().await?;
        }
        let properties = to_basic_properties(&message)?;
        let confirm = self
            .channel()
            .basic_publish(
                name("exchange name", exchange)?,
                name("routing key", routing_key)?,
                BasicPublishOptions {
                    mandatory,
                    immediate: false,
                },
                &message.body,
                properties,
            )
            .await
            .map_err(self.link.op("basic.publish"))?;
        if !self.confirms_enabled() {
            self.tracked.mark();
        } else {
            // A broker that stops answering never confirms: the wait ends
            // when a heartbeat finds the connection lost.
            let link_down = async {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    if let Err(err) = self.check_link("waiting for the publish confirm") {
                        return err;
                    }
                }
            };
            let confirmation = tokio::select! {
                confirmation = confirm => confirmation
                    .map_err(self.link.op("waiting for the publish confirm"))?,
                err = link_down => return Err(err),
            };
            Self::check_confirmation(confirmation, exchange, routing_key)?;
        }
        Ok(())
    }

    /// Get a delayed publish ready: declare the delay topology (once per
    /// connection) and bind the destination to the delivery exchange, on a
    /// channel of their own (a refused declare or a missing queue closes
    /// that channel, not this one). Returns the routing key to publish to
    /// [`delayed::ENTRY_EXCHANGE`] with, or `None` when the message goes
    /// to the default exchange for a queue that does not exist.
    async fn prepare_delayed(
        &self,
        message: &RawMessage,
        exchange: &str,
        routing_key: &str,
        seconds: u64,
        mandatory: bool,
    ) -> Result<Option<String>> {
        if message.properties.expiration.is_some() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "amqp: a delayed message cannot carry an expiration: RabbitMQ would expire it \
                 out of its delay queue early and deliver it before its time; the message was \
                 not sent",
            ));
        }
        let key = delayed::routing_key(seconds, routing_key)?;
        let side = self.side_channel().await?;
        let prepared = self
            .prepare_on(&side, exchange, routing_key, mandatory)
            .await;
        let _ = side.close().await;
        Ok(prepared?.then_some(key))
    }

    /// What [`Self::prepare_delayed`] does on `side`; false when the
    /// message is to be dropped.
    async fn prepare_on(
        &self,
        side: &AmqpChannel,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
    ) -> Result<bool> {
        {
            let mut declared = self.link.delay_topology.lock().await;
            if !*declared {
                let queue_type = self.settings.delay_queue_type;
                delayed::declare_topology(side, queue_type)
                    .await
                    .map_err(|err| explain_topology_error(err, queue_type))?;
                *declared = true;
            }
        }
        let routing_key = delayed::strip_delay_prefix(routing_key);
        let key = delayed::delivery_binding_key(routing_key);
        if exchange.is_empty() {
            let bound = side
                .queue_bind(routing_key, &Binding::new(delayed::DELIVERY_EXCHANGE, key))
                .await;
            return match bound {
                Ok(()) => Ok(true),
                Err(err) if err.kind() == ErrorKind::NotFound && mandatory => Err(Error::new(
                    ErrorKind::Rejected,
                    format!(
                        "delayed message to the default exchange with routing key \
                         {routing_key:?}: no such queue (unroutable, mandatory)"
                    ),
                )
                .with_source(err)),
                Err(err) if err.kind() == ErrorKind::NotFound => Ok(false),
                Err(err) => Err(err),
            };
        }
        side.exchange_bind(exchange, delayed::DELIVERY_EXCHANGE, &key)
            .await?;
        Ok(true)
    }

    /// A channel of this connection for declarations that may fail.
    async fn side_channel(&self) -> Result<AmqpChannel> {
        let channel = self
            .link
            .connection
            .create_channel()
            .await
            .map_err(self.link.op("opening a channel"))?;
        let settings = Settings {
            confirm_publish: false,
            ..self.settings
        };
        Box::pin(AmqpChannel::new(
            channel,
            self.link.clone(),
            self.sync.clone(),
            settings,
        ))
        .await
    }

    fn check_confirmation(
        confirmation: Confirmation,
        exchange: &str,
        routing_key: &str,
    ) -> Result<()> {
        let returned = |message: lapin::message::BasicReturnMessage| {
            Error::new(
                ErrorKind::Rejected,
                format!(
                    "message to exchange {exchange:?} with routing key {routing_key:?} was returned: {} {}",
                    message.reply_code, message.reply_text
                ),
            )
        };
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(message)) | Confirmation::Nack(Some(message)) => {
                Err(returned(message))
            }
            Confirmation::Nack(None) => Err(Error::new(
                ErrorKind::Rejected,
                format!(
                    "the broker refused (nacked) the message to exchange {exchange:?} with routing key {routing_key:?}"
                ),
            )),
        }
    }
}

#[async_trait]
impl Channel for AmqpChannel {
    async fn exchange_declare(&self, exchange: &Exchange) -> Result<()> {
        self.check_link("exchange.declare")?;
        if exchange.is_default() {
            return Ok(());
        }
        let options = ExchangeDeclareOptions {
            passive: exchange.passive,
            durable: exchange.durable,
            auto_delete: exchange.auto_delete,
            internal: false,
            nowait: false,
        };
        self.channel()
            .exchange_declare(
                name("exchange name", &exchange.name)?,
                exchange_kind(exchange.kind),
                options,
                to_field_table(&exchange.arguments)?,
            )
            .await
            .map_err(self.link.op("exchange.declare"))
    }

    async fn exchange_delete(&self, exchange: &str) -> Result<()> {
        self.channel()
            .exchange_delete(
                name("exchange name", exchange)?,
                ExchangeDeleteOptions::default(),
            )
            .await
            .map_err(self.link.op("exchange.delete"))
    }

    async fn queue_declare(&self, queue: &Queue) -> Result<QueueInfo> {
        self.check_link("queue.declare")?;
        if queue.arguments.contains_key("x-delivery-limit") && queue.queue_type() != Some("quorum")
        {
            // A classic queue takes the argument and ignores it: the poison
            // message would loop forever.
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "amqp: queue {:?}: RabbitMQ honours x-delivery-limit on quorum queues only \
                     (Queue::quorum())",
                    queue.name
                ),
            ));
        }
        let options = QueueDeclareOptions {
            passive: queue.passive,
            durable: queue.durable,
            exclusive: queue.exclusive,
            auto_delete: queue.auto_delete,
            nowait: false,
        };
        let declared = self
            .channel()
            .queue_declare(
                name("queue name", &queue.name)?,
                options,
                to_field_table(&queue.declare_arguments())?,
            )
            .await
            .map_err(self.link.op("queue.declare"))?;
        self.link.quarantine.note_declared(queue);
        Ok(QueueInfo::new(
            declared.name().as_str(),
            u64::from(declared.message_count()),
            u64::from(declared.consumer_count()),
        ))
    }

    async fn queue_bind(&self, queue: &str, binding: &Binding) -> Result<()> {
        self.channel()
            .queue_bind(
                name("queue name", queue)?,
                name("exchange name", &binding.exchange)?,
                name("routing key", &binding.routing_key)?,
                QueueBindOptions::default(),
                to_field_table(&binding.arguments)?,
            )
            .await
            .map_err(self.link.op("queue.bind"))
    }

    async fn queue_unbind(&self, queue: &str, binding: &Binding) -> Result<()> {
        self.channel()
            .queue_unbind(
                name("queue name", queue)?,
                name("exchange name", &binding.exchange)?,
                name("routing key", &binding.routing_key)?,
                to_field_table(&binding.arguments)?,
            )
            .await
            .map_err(self.link.op("queue.unbind"))
    }

    async fn queue_delete(&self, queue: &str) -> Result<u64> {
        self.link.quarantine.note_deleted(queue);
        self.channel()
            .queue_delete(name("queue name", queue)?, QueueDeleteOptions::default())
            .await
            .map(u64::from)
            .map_err(self.link.op("queue.delete"))
    }

    async fn queue_purge(&self, queue: &str) -> Result<u64> {
        self.sync.settle().await;
        self.channel()
            .queue_purge(name("queue name", queue)?, QueuePurgeOptions::default())
            .await
            .map(u64::from)
            .map_err(self.link.op("queue.purge"))
    }

    /// A passive declare on a short-lived channel of the same connection,
    /// so that a missing queue (NOT_FOUND closes the channel) leaves this
    /// channel usable.
    async fn queue_size(&self, queue: &str) -> Result<u64> {
        let queue = name("queue name", queue)?;
        if !self.is_open() {
            return Err(Error::new(
                ErrorKind::ChannelClosed,
                "queue.declare (passive): the channel is closed",
            ));
        }
        let published = self.sync.settle().await;
        let side = self
            .link
            .connection
            .create_channel()
            .await
            .map_err(self.link.op("opening a channel"))?;
        let result = passive_count(&side, &queue, published).await;
        if side.status().connected() {
            let _ = side.close(200, "OK".into()).await;
        }
        result
    }

    async fn exchange_bind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
    ) -> Result<()> {
        self.channel()
            .exchange_bind(
                name("exchange name", destination)?,
                name("exchange name", source)?,
                name("routing key", routing_key)?,
                ExchangeBindOptions::default(),
                no_arguments(),
            )
            .await
            .map_err(self.link.op("exchange.bind"))
    }

    async fn basic_publish(
        &self,
        message: RawMessage,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
    ) -> Result<()> {
        self.check_link("basic.publish")?;
        let delay = match message.not_before {
            Some(when) => delayed::delay_seconds(when, std::time::SystemTime::now())?,
            None => None,
        };
        let Some(seconds) = delay else {
            return self
                .publish_now(message, exchange, routing_key, mandatory)
                .await;
        };
        match self
            .prepare_delayed(&message, exchange, routing_key, seconds, mandatory)
            .await?
        {
            Some(key) => {
                self.publish_now(message, delayed::ENTRY_EXCHANGE, &key, mandatory)
                    .await
            }
            // To the default exchange for a queue that does not exist:
            // dropped, as an undelayed message would be.
            None => Ok(()),
        }
    }

    async fn basic_get(&self, queue: &str, no_ack: bool) -> Result<Option<Delivery>> {
        self.check_link("basic.get")?;
        self.sync.settle().await;
        let got = self
            .channel()
            .basic_get(name("queue name", queue)?, BasicGetOptions { no_ack })
            .await
            .map_err(self.link.op("basic.get"))?;
        if no_ack {
            if let Some(message) = &got {
                self.tracked
                    .acks
                    .note_unacked_delivery(message.delivery.delivery_tag);
            }
        }
        Ok(got.map(|message| {
            receive(
                &self.link.quarantine,
                &self.held,
                message.delivery,
                None,
                queue,
                no_ack,
            )
        }))
    }

    async fn basic_consume(
        &self,
        queue: &str,
        consumer_tag: &str,
        no_ack: bool,
    ) -> Result<DeliveryStream> {
        self.basic_consume_with_arguments(queue, consumer_tag, no_ack, &Arguments::new())
            .await
    }

    /// `basic.consume` with its arguments (`x-stream-offset`,
    /// `x-priority`, ...) as an AMQP field table.
    async fn basic_consume_with_arguments(
        &self,
        queue: &str,
        consumer_tag: &str,
        no_ack: bool,
        arguments: &Arguments,
    ) -> Result<DeliveryStream> {
        self.check_link("basic.consume")?;
        let arguments = if arguments.is_empty() {
            no_arguments()
        } else {
            to_field_table(arguments)?
        };
        let consumer = self
            .channel()
            .basic_consume(
                name("queue name", queue)?,
                name("consumer tag", consumer_tag)?,
                BasicConsumeOptions {
                    no_ack,
                    ..BasicConsumeOptions::default()
                },
                arguments,
            )
            .await
            .map_err(self.link.op("basic.consume"))?;
        let tag = consumer.tag().as_str().to_owned();
        let queue = queue.to_owned();
        let (link, acks, held) = (
            self.link.clone(),
            self.tracked.acks.clone(),
            self.held.clone(),
        );
        // lapin ends a consumer's stream after an error item when its
        // channel or connection dies: the error says which (a lost
        // connection is a ConnectionLost), then the stream ends.
        Ok(consumer
            .map(move |delivery| match delivery {
                Ok(d) => {
                    if no_ack {
                        acks.note_unacked_delivery(d.delivery_tag);
                    }
                    Ok(Box::new(receive(
                        &link.quarantine,
                        &held,
                        d,
                        Some(&tag),
                        &queue,
                        no_ack,
                    )))
                }
                Err(err) => Err(link.error(err, "receiving a delivery")),
            })
            .boxed())
    }

    async fn basic_cancel(&self, consumer_tag: &str) -> Result<()> {
        self.tracked.acks.flush().await?;
        self.channel()
            .basic_cancel(
                name("consumer tag", consumer_tag)?,
                BasicCancelOptions::default(),
            )
            .await
            .map_err(self.link.op("basic.cancel"))
    }

    /// In-order acks may be sent a few milliseconds later, several as one
    /// multiple-ack (see the crate docs); never an ack the user did not make.
    async fn basic_ack(&self, delivery_tag: u64, multiple: bool) -> Result<()> {
        self.check_open("basic.ack")?;
        self.tracked.acks.ack(delivery_tag, multiple).await?;
        self.held.forget(delivery_tag, multiple);
        Ok(())
    }

    /// Without requeue, from a queue this connection declared without a
    /// dead-letter exchange: published to `<queue>.quarantine` (confirmed)
    /// and then acked, unless the `quarantine` option is off. When that
    /// publish fails the delivery stays unacked (RabbitMQ delivers it
    /// again once the channel closes) and the error is returned.
    async fn basic_reject(&self, delivery_tag: u64, requeue: bool) -> Result<()> {
        self.check_open("basic.reject")?;
        let held = self.held.take(delivery_tag);
        match held {
            Some(held) if !requeue => {
                let put = self
                    .link
                    .quarantine
                    .put(&self.link.connection, held.clone())
                    .await;
                if let Err(err) = put {
                    // Still unacked: a later reject tries again.
                    self.held.hold(delivery_tag, held);
                    return Err(err);
                }
                self.tracked.acks.ack(delivery_tag, false).await
            }
            _ => self.tracked.acks.reject(delivery_tag, requeue).await,
        }
    }

    /// Nothing to extend: RabbitMQ keeps an unacked delivery with its
    /// channel for as long as the channel lives (its `consumer_timeout`,
    /// a server setting, closes a channel holding one too long).
    async fn extend_lease(&self, _delivery_tag: u64, _by: std::time::Duration) -> Result<()> {
        self.check_open("extending a lease")
    }

    /// Per-consumer prefetch (`global=false`): applies to consumers started
    /// after it, as RabbitMQ (and quorum queues) expect.
    async fn basic_qos(&self, prefetch_count: u16) -> Result<()> {
        self.tracked.acks.set_prefetch(prefetch_count).await?;
        self.channel()
            .basic_qos(prefetch_count, BasicQosOptions { global: false })
            .await
            .map_err(self.link.op("basic.qos"))
    }

    async fn close(&self) -> Result<()> {
        if !self.tracked.channel.status().connected() {
            return Ok(());
        }
        self.tracked.acks.flush().await?;
        match self.tracked.channel.close(200, "OK".into()).await {
            Ok(()) => Ok(()),
            // Closed meanwhile (by the broker or another task): nothing to do.
            Err(_) if !self.tracked.channel.status().connected() => Ok(()),
            Err(err) => Err(self.link.op("channel.close")(err)),
        }
    }

    fn is_open(&self) -> bool {
        self.tracked.channel.status().connected()
    }
}

/// A refused declaration of the delay topology, with the likely cause.
fn explain_topology_error(err: Error, queue_type: delayed::DelayQueueType) -> Error {
    if err.kind() != ErrorKind::PreconditionFailed {
        return err;
    }
    let other = match queue_type {
        delayed::DelayQueueType::Quorum => "classic",
        _ => "quorum",
    };
    Error::new(
        ErrorKind::PreconditionFailed,
        format!(
            "amqp: the native delayed delivery queues exist with other arguments than {} ones \
             (declared by Celery with broker_native_delayed_delivery_queue_type={other}? set \
             transport option delayed_delivery_queue_type={other}): {}",
            queue_type.as_str(),
            err.message()
        ),
    )
    .with_source(err)
}

/// The ready-message count of `queue` by passive declares on `side`.
///
/// RabbitMQ answers a count before it has enqueued messages already on
/// their way to the queue (its queue process serves `stat` before pending
/// deliveries). After publishes on this connection (`published`), read
/// until two reads a few milliseconds apart agree (at most ~100 ms).
async fn passive_count(side: &lapin::Channel, queue: &ShortString, published: bool) -> Result<u64> {
    let read = || async {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        side.queue_declare(queue.clone(), options, no_arguments())
            .await
            .map(|q| u64::from(q.message_count()))
            .map_err(op("queue.declare (passive)"))
    };
    let mut count = read().await?;
    if published {
        for _ in 0..30 {
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            let again = read().await?;
            if again == count {
                break;
            }
            count = again;
        }
    }
    Ok(count)
}

impl Drop for AmqpChannel {
    /// Close the channel so that RabbitMQ requeues what it holds unacked.
    /// Without a runtime, lapin closes it when its last handle goes.
    fn drop(&mut self) {
        if !self.tracked.channel.status().connected() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let tracked = self.tracked.clone();
            handle.spawn(async move {
                if let Err(err) = tracked.acks.flush().await {
                    tracing::debug!(error = %err, "sending the deferred acks of a dropped AMQP channel failed");
                }
                if let Err(err) = tracked.channel.close(200, "OK".into()).await {
                    tracing::debug!(error = %err, "closing a dropped AMQP channel failed");
                }
            });
        }
    }
}
