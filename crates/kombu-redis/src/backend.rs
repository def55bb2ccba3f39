//! [`RedisBackend`]: the virtual channel's storage on Redis, in Python
//! kombu 5.7's layout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kombu_core::routing::{kombu_topic_regex, route, QueueBinding};
use kombu_core::spi::async_trait;
use kombu_core::spi::{
    new_delivery_tag, Fetched, FetchedBody, Receipt, StopWaiting, StoredMessage, VirtualBackend,
};
use kombu_core::{
    Arguments, Capabilities, Envelope, Error, ErrorKind, Exchange, ExchangeType, Queue, Result,
};
use serde_json::Value;
use tokio::sync::{oneshot, Notify};

use crate::config::{FanoutMode, QueueOrder, RedisConfig};
use crate::conn::RedisConn;
use crate::error::map_redis;
use crate::fanout::PubSubHub;
use crate::keys::{api_priority, wire_priority, Keys};
use crate::scripts::Scripts;

/// Binding arguments by binding member, as stored.
type ArgsByMember = HashMap<Vec<u8>, Vec<u8>>;

/// Receipts of PUB/SUB deliveries start with this (their ack is a no-op).
const PUBSUB_RECEIPT: &str = "pubsub:";
/// Messages restored per `ZRANGE` of a restore sweep (kombu's `num`).
const RESTORE_BATCH: isize = 10;
/// How long one hold of the `unacked_mutex` lasts before it is renewed
/// (after every batch of a sweep), when `unacked_mutex_expire` is longer:
/// a sweep cut short (its task aborted as its connection closes, its
/// process killed) keeps every other consumer of the database from
/// restoring for this long, not for kombu's 300 s.
const MUTEX_HOLD: Duration = Duration::from_secs(10);
/// The most messages one fetch script call takes (a prefetch of 0 means
/// "no limit": the batch is capped here).
const MAX_FETCH_BATCH: usize = 256;
/// The most acks one flush sends (two commands: ZREM and HDEL with them all).
const MAX_ACK_BATCH: usize = 1024;
/// kombu's BINDING_EXPIRES_FACTOR and MIN_BINDING_TTL.
const BINDING_EXPIRES_FACTOR: u64 = 2;
const MIN_BINDING_TTL_MS: u64 = 3_600_000;

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

#[derive(Default)]
struct Cache {
    /// Exchange -> its type, `None` when unknown; with when it was read.
    types: HashMap<String, (Instant, Option<ExchangeType>)>,
    /// Exchange -> its bindings; with when they were read.
    bindings: HashMap<String, (Instant, Arc<Vec<QueueBinding>>)>,
    /// Queue -> x-expires in ms, for queues declared here.
    expires: HashMap<String, u64>,
    /// Binding members of expiring queues made here: (exchange, member, ttl ms).
    expiring_bindings: Vec<(String, String, u64)>,
    /// Queues in the order they were first consumed (queue_order_strategy=priority).
    first_seen: Vec<String>,
    /// Queues fetched from here (on a cluster, whose unacked keys the
    /// restore sweep looks at, with the declared ones).
    consumed: std::collections::BTreeSet<String>,
    /// Queues this connection stored delayed messages in: its maintenance
    /// task moves what is due (so Python consumers get them too).
    delayed: std::collections::BTreeSet<String>,
}

pub(crate) struct Shared {
    pub config: RedisConfig,
    pub keys: Keys,
    pub conn: RedisConn,
    pub scripts: Scripts,
    cache: Mutex<Cache>,
    pub hub: Option<Arc<PubSubHub>>,
    /// Woken when this process stores a message (or PUB/SUB buffers one).
    pub arrived: Arc<Notify>,
    pub closed: AtomicBool,
    /// Set when a command failed with a connection error (the core's
    /// `VirtualTransport` has marked the connection lost for the same
    /// error): closing then skips its restore sweep rather
    /// than wait on a server that does not answer. Liveness itself is the
    /// core's.
    pub unreachable: AtomicBool,
    next_pubsub: AtomicU64,
    acks: AckQueue,
    puts: PutQueue,
}

/// Acks waiting to be sent: `ack` queues its receipt and waits for the
/// answer; one flusher task at a time sends every receipt queued so far in
/// one round trip (ZREM + HDEL with all of them, in MULTI) and tells each
/// waiter how it went. Acks made together (by several consumers, tasks or
/// channels of one connection) cost one round trip; an ack returns only
/// once Redis has applied it, and a failed round trip fails every ack it
/// carried (those messages come back after `visibility_timeout`).
/// Publishes waiting to be sent: a publish with nobody sending sends what
/// is queued (its own LPUSH and any others) in one pipeline and answers
/// the others; publishes made meanwhile queue up, and when the sender is
/// done it leaves the rest to a flusher task, which sends them a pipeline
/// per round trip. A lone publish goes out at once, in its own task; many
/// at once (`publish_many`, concurrent `publish` calls) share round trips
/// and one request to the connection each batch, as a hand-made pipeline
/// would. Each publish returns once Redis has answered its batch.
#[derive(Default)]
struct PutQueue {
    pending: Mutex<Vec<PutWaiter>>,
    /// True while a publish or a flusher task is sending.
    sending: AtomicBool,
}

/// One queued LPUSH (list, message) and where its answer goes.
type PutWaiter = (String, Vec<u8>, oneshot::Sender<Result<()>>);

/// Most LPUSHes in one pipeline.
const MAX_PUT_BATCH: usize = 256;

/// One waiter's (queue, receipt) pairs and where its answer goes.
type AckWaiter = (Vec<(String, String)>, oneshot::Sender<Result<()>>);

#[derive(Default)]
struct AckQueue {
    /// Each waiter's receipts and where its answer goes.
    pending: Mutex<Vec<AckWaiter>>,
    /// True while a flusher task runs.
    flushing: AtomicBool,
}

/// The [`VirtualBackend`] of `redis://`: kombu-core's `VirtualTransport`
/// serves it (liveness, the operation timeout, channels) and hands it out
/// as the connection's extension, for what only Redis does
/// ([`RedisBackend::restore_visible`]):
///
/// ```no_run
/// # async fn demo() -> kombu_core::Result<()> {
/// let mut registry = kombu_core::Registry::new();
/// kombu_redis::register(&mut registry);
/// let conn = kombu_core::Connection::with_registry("redis://localhost:6379/0", registry.into())?;
/// let backend = conn.extension::<kombu_redis::RedisBackend>().await?;
/// backend.ping().await?;
/// # Ok(()) }
/// ```
pub struct RedisBackend {
    pub(crate) shared: Arc<Shared>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl RedisBackend {
    pub(crate) fn new(
        config: RedisConfig,
        conn: RedisConn,
        subscribers: Vec<redis::Client>,
    ) -> Self {
        let arrived = Arc::new(Notify::new());
        let hub = (config.fanout_mode == FanoutMode::PubSub)
            .then(|| PubSubHub::new(subscribers, arrived.clone()));
        let shared = Arc::new(Shared {
            keys: Keys::new(&config),
            config,
            conn,
            scripts: Scripts::new(),
            cache: Mutex::new(Cache::default()),
            hub,
            arrived,
            closed: AtomicBool::new(false),
            unreachable: AtomicBool::new(false),
            next_pubsub: AtomicU64::new(1),
            acks: AckQueue::default(),
            puts: PutQueue::default(),
        });
        let tasks = crate::maintenance::spawn(&shared);
        RedisBackend {
            shared,
            tasks: Mutex::new(tasks),
        }
    }

    /// Return messages whose consumer has not acked them within
    /// `visibility_timeout` to their queues (kombu's `restore_visible`),
    /// under kombu's `unacked_mutex`; returns how many were restored.
    /// The transport runs it every `unacked_restore_interval` and on close.
    /// A connection's backend is `conn.extension::<RedisBackend>()`:
    ///
    /// ```no_run
    /// # async fn demo(conn: kombu_core::Connection) -> kombu_core::Result<()> {
    /// use kombu_redis::RedisBackend;
    /// let restored = conn.extension::<RedisBackend>().await?.restore_visible().await?;
    /// println!("{restored} messages back in their queues");
    /// # Ok(()) }
    /// ```
    pub async fn restore_visible(&self) -> Result<u64> {
        self.shared.restore_visible().await
    }

    /// One PING round trip, bounded by the response timeout: the
    /// heartbeat (`VirtualBackend::ping`).
    ///
    /// ```no_run
    /// # async fn demo(conn: kombu_core::Connection) -> kombu_core::Result<()> {
    /// conn.extension::<kombu_redis::RedisBackend>().await?.ping().await?;
    /// # Ok(()) }
    /// ```
    pub async fn ping(&self) -> Result<()> {
        let s = &self.shared;
        let bound = s.config.response_timeout();
        let ping = async { s.conn().ping().await.map_err(map_redis) };
        let result = match tokio::time::timeout(bound, ping).await {
            Ok(result) => result.map(drop),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("redis: no answer to PING within {bound:?}"),
            )),
        };
        if let Err(err) = &result {
            s.mark_unreachable(err);
        }
        result
    }
}

impl Shared {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    /// Remember that the server is unreachable when `err` says so.
    pub(crate) fn mark_unreachable(&self, err: &Error) {
        if err.is_connection_error() {
            self.unreachable.store(true, Ordering::Release);
        }
    }

    /// Queue an ack, make sure a flusher runs, and wait for the answer.
    async fn ack_together(self: &Arc<Self>, queue: &str, receipt: &str) -> Result<()> {
        self.ack_all_together(std::iter::once((queue, receipt)))
            .await
    }

    /// [`ack_together`](Self::ack_together) for many receipts: they join
    /// the next flush together, and the answer is the flush's.
    async fn ack_all_together<'a>(
        self: &Arc<Self>,
        receipts: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.acks.pending.lock().unwrap_or_else(|e| e.into_inner());
            let receipts: Vec<(String, String)> = receipts
                .map(|(q, r)| (q.to_owned(), r.to_owned()))
                .collect();
            if receipts.is_empty() {
                return Ok(());
            }
            pending.push((receipts, tx));
        }
        if !self.acks.flushing.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().ack_flusher());
        }
        rx.await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::ConnectionLost,
                "redis: the ack was not sent (the transport shut down)",
            ))
        })
    }

    /// Send queued acks, a batch per round trip, until none is left.
    async fn ack_flusher(self: Arc<Self>) {
        loop {
            let batch: Vec<AckWaiter> = {
                let mut pending = self.acks.pending.lock().unwrap_or_else(|e| e.into_inner());
                // Whole waiters, up to about MAX_ACK_BATCH receipts.
                let mut receipts = 0;
                let take = pending
                    .iter()
                    .take_while(|(r, _)| {
                        let first = receipts == 0;
                        receipts += r.len();
                        first || receipts <= MAX_ACK_BATCH
                    })
                    .count();
                if take == 0 {
                    // Cleared under the lock: an ack queued after this
                    // sees `false` and starts a flusher.
                    self.acks.flushing.store(false, Ordering::Release);
                    return;
                }
                pending.drain(..take).collect()
            };
            // Receipts by unacked hash: kombu's one, or one per queue on
            // a cluster (each queue's MULTI then runs in its slot).
            let mut by_key: Vec<(String, String, Vec<&str>)> = Vec::new();
            for (queue, receipt) in batch.iter().flat_map(|(r, _)| r.iter()) {
                let unacked = self.keys.unacked_of(queue);
                match by_key.iter_mut().find(|(k, _, _)| *k == unacked) {
                    Some((_, _, receipts)) => receipts.push(receipt),
                    None => {
                        let index = self.keys.unacked_index_of(queue);
                        by_key.push((unacked, index, vec![receipt]));
                    }
                }
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (unacked, index, receipts) in &by_key {
                pipe.cmd("ZREM")
                    .arg(index)
                    .arg(receipts)
                    .ignore()
                    .cmd("HDEL")
                    .arg(unacked)
                    .arg(receipts)
                    .ignore();
            }
            let sent: Result<()> = pipe.query_async(&mut self.conn()).await.map_err(map_redis);
            if let Err(err) = &sent {
                self.mark_unreachable(err);
            }
            for (_, waiter) in batch {
                let answer = match &sent {
                    Ok(()) => Ok(()),
                    Err(err) => Err(Error::new(err.kind(), err.message().to_owned())),
                };
                let _ = waiter.send(answer);
            }
        }
    }

    fn invalidate(&self, exchange: &str) {
        let mut cache = self.cache();
        cache.bindings.remove(exchange);
        cache.types.remove(exchange);
    }

    /// The envelope as stored: the priority in kombu's numbering.
    fn wire_json(&self, envelope: &Envelope, api: u8) -> (Vec<u8>, u8) {
        let wire = wire_priority(api);
        let mut copy = envelope.clone();
        copy.properties.insert("priority".into(), wire.into());
        (copy.to_json(), wire)
    }

    /// Put a fetched message's JSON back at the head of its queue (and
    /// forget its unacked entry, in one script).
    async fn requeue_json(
        &self,
        queue: &str,
        receipt: &Receipt,
        json: Vec<u8>,
        wire: u8,
    ) -> Result<()> {
        if receipt.starts_with(PUBSUB_RECEIPT) {
            if let Some(hub) = &self.hub {
                hub.push_front(queue, json);
            }
            return Ok(());
        }
        let _: i64 = self
            .scripts
            .requeue
            .key(self.keys.unacked_of(queue))
            .key(self.keys.unacked_index_of(queue))
            .key(self.keys.list_for_wire(queue, wire))
            .arg(receipt)
            .arg(json)
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_redis)?;
        self.arrived.notify_waiters();
        Ok(())
    }

    /// LPUSH a stored message (one command; concurrent publishes share the
    /// multiplexed connection, which pipelines them).
    async fn put_json(self: &Arc<Self>, queue: &str, json: Vec<u8>, wire: u8) -> Result<()> {
        self.keys.check_queue(queue)?;
        let list = self.keys.list_for_wire(queue, wire);
        let result = match self.queue_expires(queue).await {
            Some(expires) => {
                let mut pipe = redis::pipe();
                pipe.cmd("LPUSH").arg(&list).arg(json).ignore();
                for list in self.keys.lists(queue) {
                    pipe.cmd("PEXPIRE").arg(list).arg(expires).ignore();
                }
                pipe.query_async::<()>(&mut self.conn()).await
            }
            None => return self.put_together(list, json).await,
        };
        result.map_err(|err| {
            let err = map_redis(err);
            self.mark_unreachable(&err);
            err
        })?;
        self.arrived.notify_waiters();
        Ok(())
    }

    /// LPUSH `json` onto `list` with the publishes made at the same time
    /// (see [`PutQueue`]).
    async fn put_together(self: &Arc<Self>, list: String, json: Vec<u8>) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut pending = self.puts.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.push((list, json, tx));
            !self.puts.sending.swap(true, Ordering::AcqRel)
        };
        if lead {
            // Nobody is sending: send what is queued (ours included) now.
            let more = self.send_puts().await;
            if more {
                tokio::spawn(self.clone().put_flusher());
            }
        }
        rx.await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::ConnectionLost,
                "redis: the publish was not sent (the transport shut down)",
            ))
        })
    }

    /// Send queued publishes until none is left.
    async fn put_flusher(self: Arc<Self>) {
        while self.send_puts().await {}
    }

    /// Send one pipeline of queued publishes and answer them; true when
    /// more are queued (the caller keeps `sending`), false when none is
    /// (`sending` cleared under the lock).
    async fn send_puts(&self) -> bool {
        let batch: Vec<PutWaiter> = {
            let mut pending = self.puts.pending.lock().unwrap_or_else(|e| e.into_inner());
            let take = pending.len().min(MAX_PUT_BATCH);
            pending.drain(..take).collect()
        };
        if !batch.is_empty() {
            let mut pipe = redis::pipe();
            for (list, json, _) in &batch {
                pipe.cmd("LPUSH").arg(list).arg(&json[..]).ignore();
            }
            let sent: Result<()> = pipe
                .query_async::<()>(&mut self.conn())
                .await
                .map_err(map_redis);
            match &sent {
                Ok(()) => self.arrived.notify_waiters(),
                Err(err) => self.mark_unreachable(err),
            }
            for (_, _, waiter) in batch {
                let answer = match &sent {
                    Ok(()) => Ok(()),
                    Err(err) => Err(Error::new(err.kind(), err.message().to_owned())),
                };
                let _ = waiter.send(answer);
            }
        }
        let pending = self.puts.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.is_empty() {
            // Cleared under the lock: a publish queued after this sees
            // `false` and sends itself.
            self.puts.sending.store(false, Ordering::Release);
            false
        } else {
            true
        }
    }

    /// Read a stored message: the priority back in the API's numbering.
    fn read_fetched(&self, queue: &str, receipt: String, raw: &[u8]) -> Fetched {
        let mut fetched = Fetched::from_json(queue, receipt, raw);
        if let FetchedBody::Envelope(envelope) = &mut fetched.body {
            let wire = envelope
                .properties
                .get("priority")
                .and_then(|p| p.as_u64().or_else(|| p.as_f64().map(|f| f.max(0.0) as u64)))
                .unwrap_or(0);
            envelope
                .properties
                .insert("priority".into(), api_priority(wire).into());
        }
        fetched
    }

    async fn exchange_kind(&self, name: &str) -> Result<Option<ExchangeType>> {
        let ttl = self.config.binding_cache_ttl;
        if let Some((at, kind)) = self.cache().types.get(name) {
            if at.elapsed() < ttl {
                return Ok(*kind);
            }
        }
        let stored: Option<String> = redis::cmd("HGET")
            .arg(self.keys.exchange_types())
            .arg(name)
            .query_async(&mut self.conn())
            .await
            .map_err(map_redis)?;
        let kind = match stored {
            Some(text) => text.parse().ok(),
            // Not declared by kombu-rs: a table with regex patterns is topic.
            None => {
                let bindings = self.bindings(name).await?;
                bindings
                    .iter()
                    .any(|b| b.arguments.contains_key(PATTERN_ARG))
                    .then_some(ExchangeType::Topic)
            }
        };
        self.cache()
            .types
            .insert(name.to_owned(), (Instant::now(), kind));
        Ok(kind)
    }

    async fn bindings(&self, exchange: &str) -> Result<Arc<Vec<QueueBinding>>> {
        if let Some((at, list)) = self.cache().bindings.get(exchange) {
            if at.elapsed() < self.config.binding_cache_ttl {
                return Ok(list.clone());
            }
        }
        let (members, args): (Vec<Vec<u8>>, ArgsByMember) = redis::pipe()
            .cmd("SMEMBERS")
            .arg(self.keys.binding(exchange))
            .cmd("HGETALL")
            .arg(self.keys.binding_args(exchange))
            .query_async(&mut self.conn())
            .await
            .map_err(map_redis)?;
        let mut list = Vec::with_capacity(members.len());
        for raw in members {
            let member = String::from_utf8_lossy(&raw);
            let Some((rk, pattern, queue)) = self.keys.parse_member(&member) else {
                continue;
            };
            let mut arguments: Arguments = args
                .get(&raw)
                .and_then(|a| serde_json::from_slice(a).ok())
                .unwrap_or_default();
            if !pattern.is_empty() {
                arguments.insert(PATTERN_ARG.into(), pattern.into());
            }
            list.push(QueueBinding::new(queue, rk).with_arguments(arguments));
        }
        list.sort_by(|a, b| (&a.queue, &a.routing_key).cmp(&(&b.queue, &b.routing_key)));
        let list = Arc::new(list);
        self.cache()
            .bindings
            .insert(exchange.to_owned(), (Instant::now(), list.clone()));
        Ok(list)
    }

    /// The queues (exchange, routing key) reach, as kombu's `_lookup`.
    async fn lookup(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope,
    ) -> Result<Vec<String>> {
        if exchange.is_empty() {
            return Ok(vec![routing_key.to_owned()]);
        }
        let kind = self
            .exchange_kind(exchange)
            .await?
            .unwrap_or(ExchangeType::Direct);
        let bindings = self.bindings(exchange).await?;
        Ok(route(kind, &bindings, routing_key, &envelope.headers)
            .into_iter()
            .map(str::to_owned)
            .collect())
    }

    fn order(&self, queues: &[String]) -> Vec<String> {
        match self.config.queue_order {
            QueueOrder::RoundRobin => queues.to_vec(),
            QueueOrder::Sorted => {
                let mut sorted = queues.to_vec();
                sorted.sort();
                sorted
            }
            QueueOrder::Priority => {
                let mut cache = self.cache();
                for q in queues {
                    if !cache.first_seen.contains(q) {
                        cache.first_seen.push(q.clone());
                    }
                }
                let mut ordered = queues.to_vec();
                ordered.sort_by_key(|q| cache.first_seen.iter().position(|s| s == q));
                ordered
            }
        }
    }

    /// One atomic look at every list of `queues` (in priority steps, then
    /// in order) taking up to `max` messages in one script call; PUB/SUB
    /// deliveries buffered here come first.
    async fn try_fetch_many(&self, queues: &[String], max: usize) -> Result<Vec<Fetched>> {
        let max = max.clamp(1, MAX_FETCH_BATCH);
        if let Some(hub) = &self.hub {
            let mut found = Vec::new();
            while found.len() < max {
                let Some((queue, raw)) = hub.pop(queues) else {
                    break;
                };
                let n = self.next_pubsub.fetch_add(1, Ordering::Relaxed);
                found.push(self.read_fetched(&queue, format!("{PUBSUB_RECEIPT}{n}"), &raw));
            }
            if !found.is_empty() {
                return Ok(found);
            }
        }
        let queues = self.order(queues);
        if !self.keys.is_cluster() {
            return self.fetch_script(&queues, max).await;
        }
        // On a cluster each queue's keys are in a slot of their own: one
        // script call per queue, in order, until the batch is full.
        self.cache().consumed.extend(queues.iter().cloned());
        let mut found = Vec::new();
        for queue in &queues {
            if found.len() >= max {
                break;
            }
            self.keys.check_queue(queue)?;
            let more = self
                .fetch_script(std::slice::from_ref(queue), max - found.len())
                .await?;
            found.extend(more);
        }
        Ok(found)
    }

    /// The fetch script over `queues` (all in one slot on a cluster).
    async fn fetch_script(&self, queues: &[String], max: usize) -> Result<Vec<Fetched>> {
        let first = queues.first().map_or("", String::as_str);
        // Receipts are kombu delivery tags (uuid4s; no syscall per tag).
        let tags: Vec<String> = (0..max).map(|_| new_delivery_tag()).collect();
        let mut invocation = self.scripts.fetch_many.prepare_invoke();
        invocation
            .key(self.keys.unacked_of(first))
            .key(self.keys.unacked_index_of(first))
            .arg(format!("{:.6}", now_secs()))
            .arg(max)
            .arg(queues.len())
            .arg((now_secs() * 1000.0) as u64);
        let mut owners = Vec::with_capacity(queues.len() * self.keys.steps().len());
        for step in self.keys.steps() {
            for queue in queues {
                invocation.key(self.keys.list(queue, *step));
                invocation.arg(Value::String(queue.clone()).to_string());
                owners.push(queue);
            }
        }
        for queue in queues {
            invocation.key(self.keys.delayed_of(queue));
        }
        for tag in &tags {
            invocation.arg(tag);
        }
        let taken: Vec<(usize, Vec<u8>)> = invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_redis)?;
        Ok(taken
            .into_iter()
            .zip(tags)
            .map(|((index, raw), receipt)| {
                let queue = owners
                    .get(index.saturating_sub(1))
                    .map_or("", |q| q.as_str());
                self.read_fetched(queue, receipt, &raw)
            })
            .collect())
    }

    /// Move the due delayed messages of the queues this connection stored
    /// delayed messages in (a queue's sorted set emptied is forgotten).
    pub(crate) async fn move_due_delayed(&self) -> Result<()> {
        let queues: Vec<String> = self.cache().delayed.iter().cloned().collect();
        let now_ms = (now_secs() * 1000.0) as u64;
        for queue in queues {
            let mut invocation = self.scripts.move_due.prepare_invoke();
            invocation.key(self.keys.delayed_of(&queue)).arg(now_ms);
            for list in self.keys.lists(&queue) {
                invocation.key(list);
            }
            let moved: i64 = invocation
                .invoke_async(&mut self.conn())
                .await
                .map_err(map_redis)?;
            let left: i64 = redis::cmd("ZCARD")
                .arg(self.keys.delayed_of(&queue))
                .query_async(&mut self.conn())
                .await
                .map_err(map_redis)?;
            if moved > 0 {
                self.arrived.notify_waiters();
            }
            if left == 0 {
                self.cache().delayed.remove(&queue);
            }
        }
        Ok(())
    }

    pub(crate) async fn restore_visible(&self) -> Result<u64> {
        if !self.keys.is_cluster() {
            return self.restore_visible_of("").await;
        }
        // On a cluster each queue has its own unacked keys: sweep those of
        // the queues consumed here and of every declared queue.
        let mut queues = self.cache().consumed.clone();
        let declared: Vec<String> = redis::cmd("HKEYS")
            .arg(self.keys.queue_declarations())
            .query_async(&mut self.conn())
            .await
            .map_err(map_redis)?;
        queues.extend(declared);
        let mut restored = 0;
        for queue in &queues {
            restored += self.restore_visible_of(queue).await?;
        }
        Ok(restored)
    }

    /// Restore what is due in the unacked keys of `queue` (kombu's one set
    /// of keys when not on a cluster), under their mutex.
    async fn restore_visible_of(&self, queue: &str) -> Result<u64> {
        let token = uuid::Uuid::new_v4().to_string();
        let mut conn = self.conn();
        let mutex = self.keys.unacked_mutex_of(queue);
        let locked: Option<String> = redis::cmd("SET")
            .arg(&mutex)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(self.mutex_hold_ms())
            .query_async(&mut conn)
            .await
            .map_err(map_redis)?;
        if locked.is_none() {
            return Ok(0);
        }
        let held = HeldMutex {
            conn,
            unlock: self.scripts.unlock.clone(),
            key: mutex,
            token,
            released: false,
        };
        let result = self.restore_locked(queue, &held.key, &held.token).await;
        held.release().await;
        result
    }

    /// How long the `unacked_mutex` is taken for at a time, in ms.
    fn mutex_hold_ms(&self) -> u64 {
        self.config.unacked_mutex_expire.min(MUTEX_HOLD).as_millis() as u64
    }

    async fn restore_locked(&self, queue: &str, mutex: &str, token: &str) -> Result<u64> {
        let mut conn = self.conn();
        let limit = self.config.unacked_restore_limit.unwrap_or(u64::MAX);
        let mut restored = 0u64;
        let mut skipped = 0isize;
        loop {
            let ceil = now_secs() - self.config.visibility_timeout.as_secs_f64();
            let tags: Vec<String> = redis::cmd("ZRANGE")
                .arg(self.keys.unacked_index_of(queue))
                .arg(format!("{ceil:.6}"))
                .arg(0)
                .arg("BYSCORE")
                .arg("REV")
                .arg("LIMIT")
                .arg(skipped)
                .arg(RESTORE_BATCH)
                .query_async(&mut conn)
                .await
                .map_err(map_redis)?;
            let batch = tags.len();
            for tag in tags {
                if restored >= limit {
                    return Ok(restored);
                }
                match self.restore_tag(queue, &tag).await {
                    Ok(true) => restored += 1,
                    Ok(false) => {}
                    Err(err) => {
                        skipped += 1;
                        tracing::warn!(error = %err, tag, "could not restore an unacked message");
                    }
                }
            }
            if (batch as isize) < RESTORE_BATCH {
                return Ok(restored);
            }
            let renewed: i64 = self
                .scripts
                .renew
                .key(mutex)
                .arg(token)
                .arg(self.mutex_hold_ms())
                .invoke_async(&mut conn)
                .await
                .map_err(map_redis)?;
            if renewed == 0 {
                tracing::warn!("lost the unacked_mutex mid-sweep: stopping this restore");
                return Ok(restored);
            }
        }
    }

    /// Put one unacked entry back where kombu would: `_lookup(exchange,
    /// routing_key)`, RPUSH (served next), marked redelivered. On a
    /// cluster the entry is one of `queue`'s and goes back to `queue`.
    async fn restore_tag(&self, queue: &str, tag: &str) -> Result<bool> {
        let mut conn = self.conn();
        let (unacked, index) = (
            self.keys.unacked_of(queue),
            self.keys.unacked_index_of(queue),
        );
        let entry: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&unacked)
            .arg(tag)
            .query_async(&mut conn)
            .await
            .map_err(map_redis)?;
        let Some(entry) = entry else {
            let _: i64 = redis::cmd("ZREM")
                .arg(&index)
                .arg(tag)
                .query_async(&mut conn)
                .await
                .map_err(map_redis)?;
            return Ok(false);
        };
        let parsed: Value = serde_json::from_slice(&entry)
            .map_err(|e| Error::new(ErrorKind::Serialization, format!("unacked entry: {e}")))?;
        let (message, exchange, routing_key) = match &parsed {
            Value::Array(parts) if parts.len() == 3 => (
                serde_json::to_vec(&parts[0]).unwrap_or_default(),
                parts[1].as_str().unwrap_or_default().to_owned(),
                parts[2].as_str().unwrap_or_default().to_owned(),
            ),
            _ => {
                return Err(Error::new(
                    ErrorKind::Serialization,
                    "unacked entry is not [message, exchange, routing_key]",
                ))
            }
        };
        let mut envelope = Envelope::from_json(&message)?;
        envelope.mark_redelivered();
        // A queue with a delivery limit counts this return too (a crashed
        // consumer's delivery counts).
        let home = if self.keys.is_cluster() {
            queue
        } else if exchange.is_empty() {
            routing_key.as_str()
        } else {
            ""
        };
        if !home.is_empty() && self.has_delivery_limit(home).await? {
            envelope.count_return();
        }
        let wire = envelope
            .properties
            .get("priority")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(255) as u8;
        let queues = if self.keys.is_cluster() {
            vec![queue.to_owned()]
        } else {
            self.lookup(&exchange, &routing_key, &envelope).await?
        };
        let mut invocation = self.scripts.restore.prepare_invoke();
        invocation
            .key(&unacked)
            .key(&index)
            .arg(tag)
            .arg(&entry)
            .arg(envelope.to_json());
        for queue in &queues {
            invocation.key(self.keys.list_for_wire(queue, wire));
        }
        let done: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(map_redis)?;
        Ok(done == 1)
    }

    /// Whether `queue` was declared with an `x-delivery-limit`.
    async fn has_delivery_limit(&self, queue: &str) -> Result<bool> {
        let stored: Option<String> = redis::cmd("HGET")
            .arg(self.keys.queue_declarations())
            .arg(queue)
            .query_async(&mut self.conn())
            .await
            .map_err(map_redis)?;
        Ok(stored
            .and_then(|json| serde_json::from_str::<Arguments>(&json).ok())
            .is_some_and(|args| args.contains_key("x-delivery-limit")))
    }

    /// Keep the binding tables of expiring queues bound here alive (kombu's
    /// maybe_refresh_binding_expiry) and sweep overdue ones.
    pub(crate) async fn refresh_bindings(&self) -> Result<()> {
        let items = self.cache().expiring_bindings.clone();
        if items.is_empty() {
            return Ok(());
        }
        for (exchange, member, ttl) in items {
            self.refresh_binding(&exchange, &member, ttl).await?;
        }
        if self.keys.is_cluster() {
            return self.sweep_bindings_in_steps().await;
        }
        let mut conn = self.conn();
        let (tables, permanent) = self.keys.binding_prefixes();
        let _: i64 = self
            .scripts
            .sweep_bindings
            .key(self.keys.binding_deadlines())
            .arg(tables)
            .arg(permanent)
            .arg(100)
            .invoke_async(&mut conn)
            .await
            .map_err(map_redis)?;
        Ok(())
    }

    /// kombu's REFRESH_BINDING: the member in the table, the table's
    /// deadline pushed to `ttl` ms from now. On a cluster the table and
    /// the deadlines are in two slots: two commands, not one script.
    async fn refresh_binding(&self, exchange: &str, member: &str, ttl: u64) -> Result<()> {
        let mut conn = self.conn();
        if self.keys.is_cluster() {
            let deadline = (now_secs() * 1000.0) as u64 + ttl;
            return redis::pipe()
                .cmd("SADD")
                .arg(self.keys.binding(exchange))
                .arg(member)
                .ignore()
                .cmd("ZADD")
                .arg(self.keys.binding_deadlines())
                .arg("GT")
                .arg(deadline)
                .arg(exchange)
                .ignore()
                .query_async(&mut conn)
                .await
                .map_err(map_redis);
        }
        self.scripts
            .refresh_binding
            .key(self.keys.binding(exchange))
            .key(self.keys.binding_deadlines())
            .arg(member)
            .arg(exchange)
            .arg(ttl)
            .invoke_async(&mut conn)
            .await
            .map_err(map_redis)
    }

    /// kombu's SWEEP_BINDINGS one command at a time (a cluster cannot run
    /// it as a script: its keys are in several slots).
    async fn sweep_bindings_in_steps(&self) -> Result<()> {
        let mut conn = self.conn();
        let now_ms = (now_secs() * 1000.0) as u64;
        let overdue: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.keys.binding_deadlines())
            .arg("-inf")
            .arg(now_ms)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(100)
            .query_async(&mut conn)
            .await
            .map_err(map_redis)?;
        for exchange in overdue {
            let permanent: bool = redis::cmd("EXISTS")
                .arg(self.keys.binding_permanent(&exchange))
                .query_async(&mut conn)
                .await
                .map_err(map_redis)?;
            let mut pipe = redis::pipe();
            if !permanent {
                pipe.cmd("DEL").arg(self.keys.binding(&exchange)).ignore();
            }
            pipe.cmd("ZREM")
                .arg(self.keys.binding_deadlines())
                .arg(&exchange)
                .ignore();
            let _: () = pipe.query_async(&mut conn).await.map_err(map_redis)?;
        }
        Ok(())
    }

    pub(crate) fn refresh_interval(&self) -> Option<Duration> {
        let cache = self.cache();
        cache
            .expiring_bindings
            .iter()
            .map(|(_, _, ttl)| Duration::from_millis(ttl / 3))
            .min()
    }

    async fn queue_expires(&self, queue: &str) -> Option<u64> {
        self.cache().expires.get(queue).copied()
    }

    /// Every binding key of the database (for deleting a queue's bindings).
    async fn binding_tables(&self) -> Result<Vec<String>> {
        if self.keys.is_cluster() {
            // SCAN walks one node of a cluster: the tables of the
            // exchanges declared through kombu-rs instead.
            let exchanges: Vec<String> = redis::cmd("HKEYS")
                .arg(self.keys.exchange_types())
                .query_async(&mut self.conn())
                .await
                .map_err(map_redis)?;
            return Ok(exchanges
                .iter()
                .flat_map(|e| [self.keys.binding(e), self.keys.binding_permanent(e)])
                .collect());
        }
        let pattern = format!("{}*", glob_escape(&self.keys.binding("")));
        let permanent = format!("{}*", glob_escape(&self.keys.binding_permanent("")));
        let mut keys = Vec::new();
        for pattern in [pattern, permanent] {
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut self.conn())
                    .await
                    .map_err(map_redis)?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(keys)
    }
}

/// Binding argument carrying the stored regex pattern (topic tables written
/// by kombu), so a table read back can tell topic from direct.
const PATTERN_ARG: &str = "x-kombu-pattern";

fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn binding_pattern(kind: ExchangeType, routing_key: &str) -> String {
    match kind {
        ExchangeType::Topic => kombu_topic_regex(routing_key),
        _ => String::new(),
    }
}

#[async_trait]
impl VirtualBackend for RedisBackend {
    fn capabilities(&self) -> Capabilities {
        crate::capabilities()
    }

    async fn ping(&self) -> Result<()> {
        RedisBackend::ping(self).await
    }

    /// Commands answer within the response timeout (`socket_timeout`).
    fn operation_timeout(&self) -> Option<Duration> {
        Some(self.shared.config.response_timeout())
    }

    async fn new_queue(&self, queue: &Queue) -> Result<()> {
        let s = &self.shared;
        s.keys.check_queue(&queue.name)?;
        let args = Value::Object(queue.declare_arguments()).to_string();
        if let Some(expires) = queue.expires {
            s.cache()
                .expires
                .insert(queue.name.clone(), expires.as_millis() as u64);
        } else {
            s.cache().expires.remove(&queue.name);
        }
        let _: () = redis::cmd("HSET")
            .arg(s.keys.queue_declarations())
            .arg(&queue.name)
            .arg(args)
            .query_async(&mut s.conn())
            .await
            .map_err(map_redis)?;
        Ok(())
    }

    async fn queue_declaration(&self, queue: &str) -> Result<Option<Queue>> {
        let s = &self.shared;
        let stored: Option<String> = redis::cmd("HGET")
            .arg(s.keys.queue_declarations())
            .arg(queue)
            .query_async(&mut s.conn())
            .await
            .map_err(map_redis)?;
        Ok(stored.map(|json| {
            let args: Arguments = serde_json::from_str(&json).unwrap_or_default();
            Queue::from_arguments(queue, &args)
        }))
    }

    async fn has_queue(&self, queue: &str) -> Result<bool> {
        let s = &self.shared;
        let mut pipe = redis::pipe();
        pipe.cmd("HEXISTS")
            .arg(s.keys.queue_declarations())
            .arg(queue);
        for list in s.keys.lists(queue) {
            pipe.cmd("EXISTS").arg(list);
        }
        let found: Vec<i64> = pipe.query_async(&mut s.conn()).await.map_err(map_redis)?;
        Ok(found.iter().any(|n| *n > 0))
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        let s = &self.shared;
        let tables = s.binding_tables().await?;
        let mut pipe = redis::pipe();
        for table in &tables {
            pipe.cmd("SMEMBERS").arg(table);
        }
        let members: Vec<Vec<String>> = if tables.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut s.conn()).await.map_err(map_redis)?
        };
        let (binding_prefix, permanent_prefix) = s.keys.binding_prefixes();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (table, members) in tables.iter().zip(members) {
            for member in members {
                if s.keys.parse_member(&member).map(|(_, _, q)| q) == Some(queue) {
                    pipe.cmd("SREM").arg(table).arg(&member).ignore();
                    let exchange = table
                        .strip_prefix(&binding_prefix)
                        .or_else(|| table.strip_prefix(&permanent_prefix))
                        .unwrap_or_default();
                    pipe.cmd("HDEL")
                        .arg(s.keys.binding_args(exchange))
                        .arg(&member)
                        .ignore();
                }
            }
        }
        for list in s.keys.lists(queue) {
            pipe.cmd("DEL").arg(list).ignore();
        }
        pipe.cmd("HDEL")
            .arg(s.keys.queue_declarations())
            .arg(queue)
            .ignore();
        let _: () = pipe.query_async(&mut s.conn()).await.map_err(map_redis)?;
        {
            let mut cache = s.cache();
            cache.bindings.clear();
            cache.expires.remove(queue);
            cache
                .expiring_bindings
                .retain(|(_, m, _)| s.keys.parse_member(m).map(|(_, _, q)| q) != Some(queue));
        }
        if let Some(hub) = &s.hub {
            hub.forget_queue(queue).await?;
        }
        Ok(())
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let s = &self.shared;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for list in s.keys.lists(queue) {
            pipe.cmd("LLEN").arg(&list).cmd("DEL").arg(&list).ignore();
        }
        pipe.cmd("ZCARD")
            .arg(s.keys.delayed_of(queue))
            .cmd("DEL")
            .arg(s.keys.delayed_of(queue))
            .ignore();
        let sizes: Vec<u64> = pipe.query_async(&mut s.conn()).await.map_err(map_redis)?;
        let buffered = s.hub.as_ref().map_or(0, |h| h.purge(queue)) as u64;
        Ok(sizes.iter().sum::<u64>() + buffered)
    }

    async fn size(&self, queue: &str) -> Result<u64> {
        let s = &self.shared;
        let mut pipe = redis::pipe();
        for list in s.keys.lists(queue) {
            pipe.cmd("LLEN").arg(list);
        }
        let sizes: Vec<u64> = pipe.query_async(&mut s.conn()).await.map_err(map_redis)?;
        let buffered = s.hub.as_ref().map_or(0, |h| h.buffered(queue)) as u64;
        Ok(sizes.iter().sum::<u64>() + buffered)
    }

    async fn put(&self, queue: &str, envelope: &Envelope, priority: u8) -> Result<()> {
        let s = &self.shared;
        let (json, wire) = s.wire_json(envelope, priority);
        s.put_json(queue, json, wire).await
    }

    async fn put_owned(&self, queue: &str, mut envelope: Envelope, priority: u8) -> Result<()> {
        let s = &self.shared;
        let wire = wire_priority(priority);
        envelope.properties.insert("priority".into(), wire.into());
        s.put_json(queue, envelope.to_json(), wire).await
    }

    /// The envelope written straight from the message (no maps built).
    async fn put_message(&self, queue: &str, message: StoredMessage, priority: u8) -> Result<()> {
        let wire = wire_priority(priority);
        self.shared
            .put_json(queue, message.to_kombu_json(wire), wire)
            .await
    }

    /// A sorted set per queue scored by due time; the fetch script moves
    /// what is due to the back of the queue's list (see
    /// docs/transports/redis.md, "Delayed delivery").
    async fn put_delayed(
        &self,
        queue: &str,
        message: StoredMessage,
        priority: u8,
        not_before_ms: u64,
    ) -> Result<()> {
        let s = &self.shared;
        s.keys.check_queue(queue)?;
        let wire = wire_priority(priority);
        let step = s.keys.step_index(wire);
        let mut member = format!("{}|{step}|", uuid::Uuid::new_v4().simple()).into_bytes();
        member.extend_from_slice(&message.to_kombu_json(wire));
        let _: () = redis::cmd("ZADD")
            .arg(s.keys.delayed_of(queue))
            .arg(not_before_ms)
            .arg(member)
            .query_async(&mut s.conn())
            .await
            .map_err(|err| {
                let err = map_redis(err);
                s.mark_unreachable(&err);
                err
            })?;
        s.cache().delayed.insert(queue.to_owned());
        Ok(())
    }

    async fn put_messages(&self, queue: &str, messages: Vec<(StoredMessage, u8)>) -> Result<()> {
        let stored = futures::future::join_all(
            messages
                .into_iter()
                .map(|(message, priority)| self.put_message(queue, message, priority)),
        )
        .await;
        stored.into_iter().find(Result::is_err).unwrap_or(Ok(()))
    }

    async fn fetch(&self, queues: &[String], wait: Duration) -> Result<Option<Fetched>> {
        Ok(self.fetch_batch(queues, wait, 1).await?.pop())
    }

    /// One script call takes up to `max` messages (kombu's BRPOP and its
    /// unacked bookkeeping, for a whole batch); with none ready it looks
    /// again when this process stores a message, or after a pause growing
    /// from 1 ms to `polling_interval`, until `wait` is over.
    async fn fetch_batch(
        &self,
        queues: &[String],
        wait: Duration,
        max: usize,
    ) -> Result<Vec<Fetched>> {
        self.fetch_batch_until(queues, wait, max, &StopWaiting::default())
            .await
    }

    async fn fetch_batch_until(
        &self,
        queues: &[String],
        wait: Duration,
        max: usize,
        stop: &StopWaiting,
    ) -> Result<Vec<Fetched>> {
        let s = &self.shared;
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(1);
        loop {
            let notified = s.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let found = s.try_fetch_many(queues, max).await.inspect_err(|err| {
                s.mark_unreachable(err);
            })?;
            if !found.is_empty() {
                return Ok(found);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || s.closed.load(Ordering::Acquire) {
                return Ok(Vec::new());
            }
            if stop.wait_or(pause.min(left), notified).await {
                return Ok(Vec::new());
            }
            pause = (pause * 2).min(s.config.polling_interval.max(Duration::from_millis(1)));
        }
    }

    /// Returns once Redis has removed the message from kombu's unacked
    /// bookkeeping; acks made at the same time share one round trip.
    async fn ack(&self, queue: &str, receipt: &Receipt) -> Result<()> {
        if receipt.starts_with(PUBSUB_RECEIPT) {
            return Ok(());
        }
        self.shared.ack_together(queue, receipt).await
    }

    /// Moves the message's score in the unacked index (kombu's
    /// `unacked_index`, read by every restore, Python kombu's too) so it
    /// is due for restore `by` from now.
    async fn extend_lease(&self, queue: &str, receipt: &Receipt, by: Duration) -> Result<()> {
        if receipt.starts_with(PUBSUB_RECEIPT) {
            return Ok(());
        }
        let s = &self.shared;
        let score = now_secs() + by.as_secs_f64() - s.config.visibility_timeout.as_secs_f64();
        let extended: i64 = s
            .scripts
            .extend
            .key(s.keys.unacked_index_of(queue))
            .arg(receipt)
            .arg(format!("{score:.6}"))
            .invoke_async(&mut s.conn())
            .await
            .map_err(map_redis)?;
        if extended == 0 {
            return Err(Error::new(
                ErrorKind::PreconditionFailed,
                "redis: the message's lease had already ended (restored to its queue after \
                 visibility_timeout, or acked): it may be delivered again",
            ));
        }
        Ok(())
    }

    fn lease_duration(&self) -> Option<Duration> {
        Some(self.shared.config.visibility_timeout)
    }

    fn concurrent_fetches(&self) -> usize {
        // The connection is multiplexed: a second fetch script is on the
        // wire while the first batch is read.
        2
    }

    async fn ack_many(&self, acks: &[(String, Receipt)]) -> Result<()> {
        let receipts = acks
            .iter()
            .map(|(queue, receipt)| (queue.as_str(), receipt.as_str()))
            .filter(|(_, receipt)| !receipt.starts_with(PUBSUB_RECEIPT));
        self.shared.ack_all_together(receipts).await
    }

    async fn requeue(&self, queue: &str, receipt: &Receipt, envelope: &Envelope) -> Result<()> {
        let s = &self.shared;
        let priority = envelope
            .properties
            .get("priority")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(255) as u8;
        let (json, wire) = s.wire_json(envelope, priority);
        s.requeue_json(queue, receipt, json, wire).await
    }

    async fn requeue_message(
        &self,
        queue: &str,
        receipt: &Receipt,
        message: StoredMessage,
    ) -> Result<()> {
        let wire = wire_priority(message.priority());
        let json = message.to_kombu_json(wire);
        self.shared.requeue_json(queue, receipt, json, wire).await
    }

    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        let s = &self.shared;
        let _: () = redis::cmd("HSET")
            .arg(s.keys.exchange_types())
            .arg(&exchange.name)
            .arg(exchange.kind.as_str())
            .query_async(&mut s.conn())
            .await
            .map_err(map_redis)?;
        s.cache()
            .types
            .insert(exchange.name.clone(), (Instant::now(), Some(exchange.kind)));
        Ok(())
    }

    async fn exchange(&self, name: &str) -> Result<Option<Exchange>> {
        Ok(self
            .shared
            .exchange_kind(name)
            .await?
            .map(|kind| Exchange::new(name, kind)))
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        let s = &self.shared;
        let bindings = s.bindings(name).await.unwrap_or_default();
        let _: () = redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(s.keys.binding(name))
            .arg(s.keys.binding_permanent(name))
            .arg(s.keys.binding_args(name))
            .ignore()
            .cmd("HDEL")
            .arg(s.keys.exchange_types())
            .arg(name)
            .ignore()
            .cmd("ZREM")
            .arg(s.keys.binding_deadlines())
            .arg(name)
            .ignore()
            .query_async(&mut s.conn())
            .await
            .map_err(map_redis)?;
        s.invalidate(name);
        s.cache().expiring_bindings.retain(|(e, _, _)| e != name);
        if let Some(hub) = &s.hub {
            for b in bindings.iter() {
                for pattern in s.keys.fanout_subscriptions(name, &b.routing_key) {
                    hub.unsubscribe(&pattern, None).await?;
                }
            }
        }
        Ok(())
    }

    async fn bind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        let s = &self.shared;
        let kind = s.exchange_kind(exchange).await?.unwrap_or_default();
        let member = s.keys.member(
            &binding.routing_key,
            &binding_pattern(kind, &binding.routing_key),
            &binding.queue,
        );
        let mut conn = s.conn();
        let arguments: Arguments = binding
            .arguments
            .iter()
            .filter(|(k, _)| k.as_str() != PATTERN_ARG)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !arguments.is_empty() {
            let _: () = redis::cmd("HSET")
                .arg(s.keys.binding_args(exchange))
                .arg(&member)
                .arg(Value::Object(arguments).to_string())
                .query_async(&mut conn)
                .await
                .map_err(map_redis)?;
        }
        match s.queue_expires(&binding.queue).await {
            Some(expires) => {
                let ttl = (expires * BINDING_EXPIRES_FACTOR).max(MIN_BINDING_TTL_MS);
                s.refresh_binding(exchange, &member, ttl).await?;
                let mut cache = s.cache();
                let entry = (exchange.to_owned(), member.clone(), ttl);
                if !cache.expiring_bindings.contains(&entry) {
                    cache.expiring_bindings.push(entry);
                }
            }
            None => {
                let _: () = redis::pipe()
                    .atomic()
                    .cmd("SADD")
                    .arg(s.keys.binding(exchange))
                    .arg(&member)
                    .ignore()
                    .cmd("SADD")
                    .arg(s.keys.binding_permanent(exchange))
                    .arg(&member)
                    .ignore()
                    .query_async(&mut conn)
                    .await
                    .map_err(map_redis)?;
            }
        }
        s.cache().bindings.remove(exchange);
        if kind == ExchangeType::Fanout {
            if let Some(hub) = &s.hub {
                for pattern in s.keys.fanout_subscriptions(exchange, &binding.routing_key) {
                    hub.subscribe(&pattern, &binding.queue).await?;
                }
            }
        }
        Ok(())
    }

    async fn unbind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        let s = &self.shared;
        let kind = s.exchange_kind(exchange).await?.unwrap_or_default();
        let member = s.keys.member(
            &binding.routing_key,
            &binding_pattern(kind, &binding.routing_key),
            &binding.queue,
        );
        let _: () = redis::pipe()
            .atomic()
            .cmd("SREM")
            .arg(s.keys.binding(exchange))
            .arg(&member)
            .ignore()
            .cmd("SREM")
            .arg(s.keys.binding_permanent(exchange))
            .arg(&member)
            .ignore()
            .cmd("HDEL")
            .arg(s.keys.binding_args(exchange))
            .arg(&member)
            .ignore()
            .query_async(&mut s.conn())
            .await
            .map_err(map_redis)?;
        s.cache().bindings.remove(exchange);
        s.cache()
            .expiring_bindings
            .retain(|(e, m, _)| !(e == exchange && m == &member));
        if kind == ExchangeType::Fanout {
            if let Some(hub) = &s.hub {
                for pattern in s.keys.fanout_subscriptions(exchange, &binding.routing_key) {
                    hub.unsubscribe(&pattern, Some(&binding.queue)).await?;
                }
            }
        }
        Ok(())
    }

    async fn bindings(&self, exchange: &str) -> Result<Vec<QueueBinding>> {
        Ok(self.shared.bindings(exchange).await?.as_ref().clone())
    }

    async fn put_fanout(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope,
    ) -> Result<bool> {
        let s = &self.shared;
        if s.hub.is_none() {
            return Ok(false);
        }
        let priority = envelope
            .properties
            .get("priority")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(255) as u8;
        let (json, _) = s.wire_json(envelope, priority);
        let _: i64 = redis::cmd("PUBLISH")
            .arg(s.keys.fanout_topic(exchange, routing_key))
            .arg(json)
            .query_async(&mut s.conn())
            .await
            .map_err(map_redis)?;
        Ok(true)
    }

    fn polling_interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    async fn close(&self) -> Result<()> {
        let s = &self.shared;
        if s.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        s.arrived.notify_waiters();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            task.abort();
        }
        if let Some(hub) = &s.hub {
            hub.close().await;
        }
        let bound = s.config.response_timeout();
        if s.unreachable.load(Ordering::Acquire) {
            return Ok(());
        }
        match tokio::time::timeout(bound, s.restore_visible())
            .await
            .unwrap_or_else(|_| Err(Error::new(ErrorKind::Timeout, "restore on close timed out")))
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                restored = n,
                "restored unacked messages past visibility_timeout"
            ),
            Err(err) => tracing::warn!(error = %err, "restore on close failed"),
        }
        Ok(())
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

/// A held `unacked_mutex`: released when its sweep ends, and also when the
/// sweep's task is aborted mid-way (its connection closing), by a task of
/// its own, so the other consumers need not wait for the mutex to expire.
struct HeldMutex {
    conn: RedisConn,
    unlock: redis::Script,
    key: String,
    token: String,
    released: bool,
}

impl HeldMutex {
    async fn release(mut self) {
        self.released = true;
        Self::unlock(
            self.conn.clone(),
            self.unlock.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.token),
        )
        .await;
    }

    async fn unlock(mut conn: RedisConn, unlock: redis::Script, key: String, token: String) {
        let unlocked: Result<i64> = unlock
            .key(&key)
            .arg(&token)
            .invoke_async(&mut conn)
            .await
            .map_err(map_redis);
        if let Err(err) = unlocked {
            tracing::warn!(error = %err, "could not release unacked_mutex");
        }
    }
}

impl Drop for HeldMutex {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // A runtime shutting down runs nothing more: the mutex then expires
        // after its short hold (MUTEX_HOLD).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(Self::unlock(
                self.conn.clone(),
                self.unlock.clone(),
                std::mem::take(&mut self.key),
                std::mem::take(&mut self.token),
            ));
        }
    }
}
