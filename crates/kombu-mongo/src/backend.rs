//! The [`VirtualBackend`] of `mongodb://`: kombu 5.7's collections and
//! documents, with leases instead of kombu's pop-before-ack.

mod claim;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use kombu_core::routing::QueueBinding;
use kombu_core::spi::{async_trait, Fetched, Receipt, StopWaiting, StoredMessage, VirtualBackend};
use kombu_core::{Capabilities, Envelope, Error, ErrorKind, Exchange, ExchangeType, Queue, Result};
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use mongodb::{Collection, Database};
use tokio::task::AbortHandle;

use crate::broadcast::{Broadcast, RECEIPT_PREFIX};
use crate::config::MongoConfig;
use crate::delayed::{parked_name, Delays, NOT_BEFORE};
use crate::documents::{
    after_millis, arguments_from_bson, arguments_to_bson, binding_pattern, exchange_document,
    exchange_from_document, lease, message_document, payload_of, queue_from_document,
    queue_options, stored_priority,
};
use crate::error::driver;
use crate::handoff::{Handed, Handoffs};
use crate::lease::{spawn_renewal, LeaseCounter};
use crate::wakeup::{IdleBackoff, Wakeups};
use crate::watch::{ChangeWatch, WANTED_AFTER_IDLE};

/// Receipts of stored messages: `m:<_id hex>:<lease id>`.
const MESSAGE_RECEIPT: &str = "m:";

/// How long a fetch remembers which fanout exchanges a queue is bound to
/// (for queues bound by other processes).
const FANOUT_LOOKUP_TTL: Duration = Duration::from_secs(5);

/// The shortest pause of an idle fetch without a change stream (after a
/// poll that found messages; doubled after each that found none, up to
/// `polling_interval`).
const SHORTEST_PAUSE: Duration = Duration::from_millis(1);

/// The longest pause of an idle fetch is at least this: a
/// `polling_interval` of 0 does not make a busy loop.
const LONGEST_PAUSE_FLOOR: Duration = Duration::from_millis(10);

/// The most messages one fetch claims (a consumer without a prefetch
/// limit asks for as many as the backend likes).
const MOST_PER_FETCH: usize = 256;

/// With a change stream open, an idle fetch still polls this often (or
/// every `polling_interval` if longer): for leases that lapse, which no
/// event reports.
const STREAM_POLL: Duration = Duration::from_secs(1);

/// The collections of one database.
#[derive(Clone)]
pub(crate) struct Collections {
    pub(crate) messages: Collection<Document>,
    pub(crate) routing: Collection<Document>,
    pub(crate) broadcast: Collection<Document>,
    pub(crate) queues: Collection<Document>,
    pub(crate) exchanges: Collection<Document>,
}

impl Collections {
    pub(crate) fn new(database: &Database, config: &MongoConfig) -> Self {
        let names = &config.collections;
        Collections {
            messages: database.collection(&names.messages),
            routing: database.collection(&names.routing),
            broadcast: database.collection(&names.broadcast),
            queues: database.collection(&names.queues),
            exchanges: database.collection(&names.exchanges),
        }
    }
}

/// The [`VirtualBackend`] of `mongodb://`.
///
/// Opened by [`crate::open`] (what [`crate::register`] installs); reached
/// from a connection with `conn.extension::<MongoBackend>()`:
///
/// ```no_run
/// # async fn demo() -> kombu_core::Result<()> {
/// let mut registry = kombu_core::Registry::new();
/// kombu_mongo::register(&mut registry);
/// let conn = kombu_core::Connection::with_registry(
///     "mongodb://localhost/jobs",
///     std::sync::Arc::new(registry),
/// )?;
/// let backend = conn.extension::<kombu_mongo::MongoBackend>().await?;
/// println!("leases held as {}", backend.lease_owner());
/// # Ok(())
/// # }
/// ```
pub struct MongoBackend {
    config: Arc<MongoConfig>,
    client: mongodb::Client,
    collections: Collections,
    /// This transport's lease owner id.
    owner: String,
    leases: Arc<LeaseCounter>,
    /// This transport's fetches waiting for its own publishes.
    handoffs: Handoffs,
    broadcast: Arc<Broadcast>,
    /// Queue -> when its fanout bindings were last looked up.
    fanout_checked: Mutex<HashMap<String, Instant>>,
    renewal: Option<AbortHandle>,
    fetched: AtomicU64,
    /// Wakes fetches waiting on a queue.
    wakeups: Arc<Wakeups>,
    /// The change stream that wakes them for other processes' messages.
    watch: ChangeWatch,
    /// The pause of idle fetches when no change stream runs.
    idle: IdleBackoff,
    /// Delayed messages: parked until due (see [`crate::delayed`]).
    delays: Arc<Delays>,
}

impl std::fmt::Debug for MongoBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoBackend")
            .field("uri", &self.config.redacted_uri())
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl MongoBackend {
    pub(crate) fn new(
        config: Arc<MongoConfig>,
        client: mongodb::Client,
        collections: Collections,
    ) -> Self {
        let owner = format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let leases = Arc::new(LeaseCounter::default());
        let renewal = spawn_renewal(
            collections.messages.clone(),
            owner.clone(),
            leases.clone(),
            config.lease_timeout,
            config.lease_renew_interval,
        );
        let retry_pause = config.polling_interval.max(Duration::from_millis(100));
        let wakeups = Arc::new(Wakeups::default());
        let watch = ChangeWatch::new(
            collections.messages.clone(),
            &wakeups,
            config.socket_timeout,
        );
        let idle = IdleBackoff::new(
            SHORTEST_PAUSE,
            config.polling_interval.max(LONGEST_PAUSE_FLOOR),
        );
        let delays = Delays::new(collections.messages.clone(), wakeups.clone());
        MongoBackend {
            delays,
            broadcast: Broadcast::new(collections.broadcast.clone(), retry_pause),
            config,
            client,
            collections,
            owner,
            handoffs: Handoffs::new(leases.clone()),
            leases,
            fanout_checked: Mutex::new(HashMap::new()),
            renewal,
            fetched: AtomicU64::new(0),
            wakeups,
            watch,
            idle,
        }
    }

    /// The id this transport writes in `lease_owner`.
    pub fn lease_owner(&self) -> &str {
        &self.owner
    }

    /// True while a change stream on the `messages` collection wakes this
    /// transport's waiting consumers when another process stores or
    /// releases a message. It is opened once a consumer has waited for a
    /// while (when the server has change streams: a replica set, not a
    /// standalone MongoDB) and closed when no consumer waits any more;
    /// without it idle consumers poll, backing off up to `polling_interval`.
    pub fn change_stream_open(&self) -> bool {
        self.watch.is_live()
    }

    /// How many messages this transport's publishes handed straight to
    /// one of its own waiting fetches (stored leased to it: no claim
    /// request), since it opened.
    pub fn handed_over(&self) -> u64 {
        self.handoffs.handed_over()
    }

    /// The database's collections, for tools and tests.
    pub fn messages_collection(&self) -> &Collection<Document> {
        &self.collections.messages
    }

    /// Make sure `queue` is subscribed to the fanout exchanges it is bound
    /// to (bindings made by other processes), looking again every few seconds.
    async fn refresh_fanout(&self, queue: &str) -> Result<()> {
        {
            let mut checked = self
                .fanout_checked
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match checked.get(queue) {
                Some(at) if at.elapsed() < FANOUT_LOOKUP_TTL => return Ok(()),
                _ => {
                    checked.insert(queue.to_owned(), Instant::now());
                }
            }
        }
        let routes: Vec<Document> = self
            .collections
            .routing
            .find(doc! { "queue": queue })
            .await
            .map_err(driver("reading bindings"))?
            .try_collect()
            .await
            .map_err(driver("reading bindings"))?;
        for route in routes {
            let Ok(exchange) = route.get_str("exchange") else {
                continue;
            };
            if self.broadcast.is_subscribed(exchange, queue) {
                continue;
            }
            if self.exchange_kind(exchange).await? == Some(ExchangeType::Fanout) {
                self.broadcast.subscribe(exchange, queue).await?;
            }
        }
        Ok(())
    }

    async fn exchange_kind(&self, name: &str) -> Result<Option<ExchangeType>> {
        Ok(self.exchange(name).await?.map(|e| e.kind))
    }

    /// One pass over `queues`, in order: up to `max` buffered broadcasts
    /// and claimed messages of the first queue that has any.
    async fn poll(&self, queues: &[String], max: usize) -> Result<Vec<Fetched>> {
        for queue in queues {
            self.refresh_fanout(queue).await?;
            let mut taken = self.broadcast.take_up_to(queue, max);
            if taken.len() < max {
                taken.extend(self.claim_up_to(queue, max - taken.len()).await?);
            }
            if !taken.is_empty() {
                return Ok(taken);
            }
        }
        Ok(Vec::new())
    }

    /// Take up to `max` messages of `queues`, waiting up to `wait` (or
    /// until `stop` is raised) for the first. Between two polls that find
    /// nothing the fetch waits for a wake-up of its queues (a put by this
    /// transport, an insert or release the change stream reports, a
    /// broadcast) or the end of its pause: the idle back-off, or with a
    /// change stream open the safety poll of [`STREAM_POLL`].
    async fn fetch_until(
        &self,
        queues: &[String],
        wait: Duration,
        max: usize,
        stop: Option<&StopWaiting>,
    ) -> Result<Vec<Fetched>> {
        let max = max.clamp(1, MOST_PER_FETCH);
        let deadline = tokio::time::Instant::now() + wait;
        let wakeups = self.wakeups.of(queues);
        // Since when this fetch has found nothing.
        let mut idle_since: Option<tokio::time::Instant> = None;
        // False after a pause that ended without a wake-up.
        let mut woken = true;
        loop {
            // Due delayed messages into their queues, before this fetch
            // opens its hand-over slot (a poll is kept short while it is
            // open: a message handed over meanwhile comes after the ones
            // the poll claims).
            for queue in queues {
                self.delays.check(queue).await?;
            }
            // Listen before looking: a message that arrives after the poll
            // looked wakes the wait below.
            let signals = self.wakeups.listen(&wakeups, &self.broadcast.arrived);
            // From here on this transport's puts into `queues` hand their
            // message over (during the poll too: the message is then stored
            // leased to us, and the poll does not see it).
            let waiting = self.handoffs.wait_on(queues);
            // A pause ended, but this transport is putting a message into
            // one of the queues: its end wakes us, and a poll now would
            // only slow it down.
            let skip = !woken && self.wakeups.putting_into(queues);
            let mut taken = if skip {
                Vec::new()
            } else {
                self.poll(queues, max).await?
            };
            let now = tokio::time::Instant::now();
            let over = now >= deadline || stop.is_some_and(StopWaiting::is_raised);
            if !taken.is_empty() || over {
                if let Some(handed) = waiting.close() {
                    self.take_handed(&mut taken, handed, max).await;
                }
                if let Some(first) = taken.first() {
                    self.idle.reset();
                    if self.config.ttl {
                        self.touch_queue_expiry(&first.queue).await?;
                    }
                }
                return Ok(taken);
            }
            let live = self.watch.is_live();
            // An open stream is kept while fetches wait; a closed one is
            // opened once this fetch has waited a while.
            if live || now.duration_since(*idle_since.get_or_insert(now)) >= WANTED_AFTER_IDLE {
                self.watch.want();
            }
            let pause = if skip {
                self.idle.shortest()
            } else if live {
                self.config.polling_interval.max(STREAM_POLL)
            } else {
                self.idle.next()
            }
            .min(deadline - now);
            // Awake when the next delayed message known of is due.
            let pause = self
                .delays
                .due_in(queues)
                .map_or(pause, |due| pause.min(due));
            let signalled = async {
                futures::future::select_all(signals).await;
                true
            };
            let stopped;
            (woken, stopped) = match stop {
                Some(stop) => {
                    let mut woken = false;
                    let signalled = async { woken = signalled.await };
                    let stopped = stop.wait_or(pause, signalled).await;
                    (woken, stopped)
                }
                None => (tokio::time::timeout(pause, signalled).await.is_ok(), false),
            };
            if let Some(handed) = waiting.close() {
                self.handoffs.took_one();
                self.idle.reset();
                if self.config.ttl {
                    self.touch_queue_expiry(&handed.fetched.queue).await?;
                }
                return Ok(vec![handed.fetched]);
            }
            if stopped {
                return Ok(Vec::new());
            }
        }
    }

    /// A message handed over while a poll found others: one more when
    /// `max` has room, at its place in claim order (it may have been
    /// stored before messages the poll claimed), else its lease is given
    /// back.
    async fn take_handed(&self, taken: &mut Vec<Fetched>, handed: Box<Handed>, max: usize) {
        if taken.len() < max {
            self.handoffs.took_one();
            let key = claim_key(&handed.fetched);
            let at = taken.partition_point(|f| claim_key(f) <= key);
            taken.insert(at, handed.fetched);
        } else {
            self.release(&handed.fetched.queue, handed.id, &handed.lease_id)
                .await;
        }
    }

    /// The `expire_at` of messages put in `queue` when `ttl` is on
    /// (kombu's `_put`), or `None` when it is off: the queue's
    /// `x-message-ttl` is read once for all of `envelopes`.
    async fn expiries(
        &self,
        queue: &str,
        envelopes: &[&Envelope],
    ) -> Result<Vec<Option<Option<DateTime>>>> {
        if !self.config.ttl {
            return Ok(vec![None; envelopes.len()]);
        }
        let queue_ttl = self
            .queue_declaration(queue)
            .await?
            .and_then(|q| q.message_ttl);
        let now = DateTime::now();
        Ok(envelopes
            .iter()
            .map(|envelope| Some(message_expiry(now, queue_ttl, envelope)))
            .collect())
    }

    /// With `ttl` on, push back the expiry of `queue` and its bindings
    /// (kombu's `_update_queues_expire`, on every fetch).
    async fn touch_queue_expiry(&self, queue: &str) -> Result<()> {
        let Some(expires) = self.queue_declaration(queue).await?.and_then(|q| q.expires) else {
            return Ok(());
        };
        let at = after_millis(DateTime::now(), expires.as_millis() as u64);
        self.collections
            .routing
            .update_many(
                doc! { "queue": queue },
                doc! { "$set": { "expire_at": at } },
            )
            .await
            .map_err(driver("updating binding expiry"))?;
        self.collections
            .queues
            .update_many(doc! { "_id": queue }, doc! { "$set": { "expire_at": at } })
            .await
            .map_err(driver("updating queue expiry"))?;
        Ok(())
    }
}

impl Drop for MongoBackend {
    fn drop(&mut self) {
        if let Some(renewal) = &self.renewal {
            renewal.abort();
        }
        self.broadcast.shutdown();
        self.watch.stop();
        self.delays.stop();
    }
}

/// Where a fetched message stands in claim order: broadcast messages
/// (served first) before stored ones, these by stored priority, then `_id`
/// (the receipt's hex, which sorts as the ObjectId).
fn claim_key(fetched: &Fetched) -> (i32, &str) {
    let Some(rest) = fetched.receipt.strip_prefix(MESSAGE_RECEIPT) else {
        return (i32::MIN, "");
    };
    let id = rest.split_once(':').map_or(rest, |(id, _)| id);
    let priority = match &fetched.body {
        kombu_core::spi::FetchedBody::Envelope(envelope) => stored_priority(envelope.priority()),
        _ => i32::MAX,
    };
    (priority, id)
}

/// `expire_at` of a message put with `ttl` on (kombu's `_put`): the earlier
/// of the queue's `x-message-ttl` and the message's `expiration`.
fn message_expiry(
    now: DateTime,
    queue_ttl: Option<Duration>,
    envelope: &Envelope,
) -> Option<DateTime> {
    let queue_ttl = queue_ttl.map(|ttl| after_millis(now, ttl.as_millis() as u64));
    let message_ttl = envelope
        .properties
        .get("expiration")
        .and_then(|v| {
            v.as_u64().or_else(|| {
                v.as_str()
                    .and_then(|s| s.trim().parse::<f64>().ok().map(|f| f as u64))
            })
        })
        .map(|ms| after_millis(now, ms));
    match (queue_ttl, message_ttl) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[async_trait]
impl VirtualBackend for MongoBackend {
    fn capabilities(&self) -> Capabilities {
        crate::capabilities()
    }

    /// The heartbeat: `ping` on the admin database (the core bounds it by
    /// the operation timeout). Any failed ping counts as a lost connection.
    async fn ping(&self) -> Result<()> {
        let admin = self.client.database("admin");
        admin
            .run_command(doc! { "ping": 1 })
            .await
            .map(|_| ())
            .map_err(|err| {
                let err = driver("ping")(err);
                if err.is_connection_error() {
                    err
                } else {
                    Error::new(
                        ErrorKind::ConnectionLost,
                        format!("mongodb heartbeat failed: {err}"),
                    )
                }
            })
    }

    /// The driver has no socket timeout: `socket_timeout` bounds each call.
    fn operation_timeout(&self) -> Option<Duration> {
        Some(self.config.socket_timeout)
    }

    async fn new_queue(&self, queue: &Queue) -> Result<()> {
        let mut set = doc! { "_id": &queue.name, "options": queue_options(queue) };
        if self.config.ttl {
            let expire_at = queue.expires.map_or(Bson::Null, |e| {
                Bson::DateTime(after_millis(DateTime::now(), e.as_millis() as u64))
            });
            set.insert("expire_at", expire_at);
        }
        self.collections
            .queues
            .update_one(doc! { "_id": &queue.name }, doc! { "$set": set })
            .upsert(true)
            .await
            .map_err(driver("declaring a queue"))?;
        Ok(())
    }

    async fn queue_declaration(&self, queue: &str) -> Result<Option<Queue>> {
        let found = self
            .collections
            .queues
            .find_one(doc! { "_id": queue })
            .await
            .map_err(driver("reading a queue declaration"))?;
        Ok(found.map(|d| queue_from_document(queue, &d)))
    }

    async fn has_queue(&self, queue: &str) -> Result<bool> {
        // kombu writes `messages.queues` only with `ttl`: a queue declared by
        // a Python process shows by its bindings or its messages.
        for (collection, filter) in [
            (&self.collections.queues, doc! { "_id": queue }),
            (&self.collections.routing, doc! { "queue": queue }),
            (&self.collections.messages, doc! { "queue": queue }),
        ] {
            let found = collection
                .find_one(filter)
                .projection(doc! { "_id": 1 })
                .await
                .map_err(driver("looking for a queue"))?;
            if found.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        let c = &self.collections;
        c.routing
            .delete_many(doc! { "queue": queue })
            .await
            .map_err(driver("deleting a queue's bindings"))?;
        c.messages
            .delete_many(doc! { "queue": { "$in": [queue, parked_name(queue)] } })
            .await
            .map_err(driver("deleting a queue's messages"))?;
        self.delays.forget(queue);
        c.queues
            .delete_one(doc! { "_id": queue })
            .await
            .map_err(driver("deleting a queue"))?;
        self.broadcast.forget_queue(queue);
        self.fanout_checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(queue);
        Ok(())
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let deleted = self
            .collections
            .messages
            .delete_many(Self::claimable(queue, DateTime::now()))
            .await
            .map_err(driver("purging a queue"))?;
        // Its delayed messages too (as memory:// and redis:// do).
        let parked = self
            .collections
            .messages
            .delete_many(doc! { "queue": parked_name(queue) })
            .await
            .map_err(driver("purging a queue's delayed messages"))?;
        Ok(deleted.deleted_count + parked.deleted_count + self.broadcast.purge(queue))
    }

    async fn size(&self, queue: &str) -> Result<u64> {
        if !self.config.calc_queue_size {
            return Ok(0);
        }
        let stored = self
            .collections
            .messages
            .count_documents(Self::claimable(queue, DateTime::now()))
            .await
            .map_err(driver("counting messages"))?;
        Ok(stored + self.broadcast.buffered(queue))
    }

    /// One insert. When a fetch of this transport waits on the queue, the
    /// message is inserted leased to it and handed over (see
    /// [`crate::handoff`]): a round trip of one request.
    async fn put(&self, queue: &str, envelope: &Envelope, priority: u8) -> Result<()> {
        let expire_at = self.expiries(queue, &[envelope]).await?.pop().flatten();
        let mut document = message_document(queue, payload_of(envelope), priority, expire_at);
        let id = document.get_object_id("_id").ok();
        let handoff = id
            .and_then(|id| Some((id, self.handoffs.reserve(queue)?)))
            .map(|(id, slot)| {
                let lease_id = ObjectId::new().to_hex();
                if let Ok(fields) = self
                    .lease_fields(&lease_id, DateTime::now())
                    .get_document("$set")
                {
                    document.extend(fields.clone());
                }
                document.insert(lease::DELIVERIES, 1_i32);
                (id, slot, lease_id)
            });
        let _wake = self.wakeups.inserting(queue, id);
        self.collections
            .messages
            .insert_one(document)
            .await
            .map_err(driver("storing a message"))?;
        if let Some((id, slot, lease_id)) = handoff {
            self.leases.add(&lease_id, [id]);
            self.fetched.fetch_add(1, Ordering::Relaxed);
            let receipt = format!("{MESSAGE_RECEIPT}{}:{lease_id}", id.to_hex());
            let handed = Box::new(Handed {
                fetched: Fetched::new(queue, receipt, envelope.clone()),
                id,
                lease_id,
            });
            if let Err(handed) = slot.fill(handed) {
                // The fetch stopped waiting: the message goes back to the queue.
                self.release(queue, handed.id, &handed.lease_id).await;
            }
        }
        Ok(())
    }

    /// One insert, parked under [`parked_name`] with its due time in
    /// `not_before` until a fetch or this transport's mover moves it into
    /// `queue` (see [`crate::delayed`]); never handed over to a waiting
    /// fetch.
    async fn put_delayed(
        &self,
        queue: &str,
        message: StoredMessage,
        priority: u8,
        not_before_ms: u64,
    ) -> Result<()> {
        let envelope = message.into_envelope();
        let expire_at = self.expiries(queue, &[&envelope]).await?.pop().flatten();
        let mut document = message_document(
            &parked_name(queue),
            payload_of(&envelope),
            priority,
            expire_at,
        );
        let due = i64::try_from(not_before_ms).unwrap_or(i64::MAX);
        document.insert(NOT_BEFORE, DateTime::from_millis(due));
        self.collections
            .messages
            .insert_one(document)
            .await
            .map_err(driver("storing a delayed message"))?;
        self.delays.parked(queue, due);
        // Waiting fetches look again and wait until it is due.
        self.wakeups.wake(queue);
        Ok(())
    }

    /// One ordered `insert_many` of the documents [`put`](Self::put)
    /// writes, in order.
    async fn put_many(&self, queue: &str, messages: Vec<(Envelope, u8)>) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let envelopes: Vec<&Envelope> = messages.iter().map(|(envelope, _)| envelope).collect();
        let expiries = self.expiries(queue, &envelopes).await?;
        let documents: Vec<Document> = messages
            .iter()
            .zip(expiries)
            .map(|((envelope, priority), expire_at)| {
                message_document(queue, payload_of(envelope), *priority, expire_at)
            })
            .collect();
        let ids: Vec<_> = documents
            .iter()
            .filter_map(|d| d.get_object_id("_id").ok())
            .collect();
        let _wake = self.wakeups.inserting(queue, ids);
        self.collections
            .messages
            .insert_many(documents)
            .ordered(true)
            .await
            .map_err(driver("storing messages"))?;
        Ok(())
    }

    async fn fetch(&self, queues: &[String], wait: Duration) -> Result<Option<Fetched>> {
        Ok(self.fetch_until(queues, wait, 1, None).await?.pop())
    }

    async fn fetch_batch(
        &self,
        queues: &[String],
        wait: Duration,
        max: usize,
    ) -> Result<Vec<Fetched>> {
        self.fetch_until(queues, wait, max, None).await
    }

    async fn fetch_batch_until(
        &self,
        queues: &[String],
        wait: Duration,
        max: usize,
        stop: &StopWaiting,
    ) -> Result<Vec<Fetched>> {
        self.fetch_until(queues, wait, max, Some(stop)).await
    }

    async fn ack(&self, queue: &str, receipt: &Receipt) -> Result<()> {
        if receipt.starts_with(RECEIPT_PREFIX) {
            return Ok(());
        }
        let (id, lease_id) = Self::parse_receipt(receipt)?;
        let deleted = self
            .collections
            .messages
            .delete_one(doc! { "_id": id, lease::ID: lease_id })
            .await
            .map_err(driver("acknowledging a message"))?;
        self.leases.remove(id, lease_id);
        if deleted.deleted_count == 0 {
            tracing::warn!(
                queue,
                id = %id,
                "ack: the lease was lost (it lapsed and another consumer claimed the message, \
                 or a Python kombu consumer popped it); it may be processed twice"
            );
        }
        Ok(())
    }

    /// One `delete_many` for the whole batch.
    async fn ack_many(&self, acks: &[(String, Receipt)]) -> Result<()> {
        self.delete_acked(acks).await
    }

    /// Sets the message's `lease_until` to `by` from now, while this
    /// claim still holds it (its `lease_id`); the renewal task never
    /// shortens it. A lease that lapsed and was claimed again, or an acked
    /// message, is a `PreconditionFailed` error. Broadcast messages have
    /// no lease: accepted.
    async fn extend_lease(&self, queue: &str, receipt: &Receipt, by: Duration) -> Result<()> {
        if receipt.starts_with(RECEIPT_PREFIX) {
            return Ok(());
        }
        let (id, lease_id) = Self::parse_receipt(receipt)?;
        let until = crate::documents::after_millis(
            DateTime::now(),
            u64::try_from(by.as_millis()).unwrap_or(u64::MAX),
        );
        let updated = self
            .collections
            .messages
            .update_one(
                doc! { "_id": id, lease::ID: lease_id },
                doc! { "$set": { lease::UNTIL: until } },
            )
            .await
            .map_err(driver("extending a lease"))?;
        if updated.matched_count == 0 {
            return Err(Error::new(
                ErrorKind::PreconditionFailed,
                format!(
                    "mongodb: the lease on a message of {queue:?} had already ended (it lapsed \
                     and another consumer claimed it, or it was acked): it may be delivered again"
                ),
            ));
        }
        Ok(())
    }

    /// `lease_timeout`: how long a claim holds without renewal.
    fn lease_duration(&self) -> Option<Duration> {
        Some(self.config.lease_timeout)
    }

    async fn requeue(&self, queue: &str, receipt: &Receipt, envelope: &Envelope) -> Result<()> {
        if receipt.starts_with(RECEIPT_PREFIX) {
            self.broadcast.put_back(queue, envelope);
            return Ok(());
        }
        let (id, lease_id) = Self::parse_receipt(receipt)?;
        let updated = self
            .collections
            .messages
            .update_one(
                doc! { "_id": id, lease::ID: lease_id },
                doc! {
                    "$set": {
                        "payload": payload_of(envelope),
                        "priority": stored_priority(envelope.priority()),
                    },
                    "$unset": { lease::OWNER: "", lease::ID: "", lease::UNTIL: "" },
                },
            )
            .await
            .map_err(driver("returning a message to its queue"))?;
        self.wakeups.wake(queue);
        self.leases.remove(id, lease_id);
        if updated.matched_count == 0 {
            tracing::warn!(
                queue,
                id = %id,
                "requeue: the lease was lost (another consumer holds or took the message)"
            );
        }
        Ok(())
    }

    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        self.collections
            .exchanges
            .replace_one(doc! { "_id": &exchange.name }, exchange_document(exchange))
            .upsert(true)
            .await
            .map_err(driver("declaring an exchange"))?;
        Ok(())
    }

    async fn exchange(&self, name: &str) -> Result<Option<Exchange>> {
        let found = self
            .collections
            .exchanges
            .find_one(doc! { "_id": name })
            .await
            .map_err(driver("reading an exchange"))?;
        if let Some(exchange) = found.as_ref().and_then(exchange_from_document) {
            return Ok(Some(exchange));
        }
        // Declared by a Python process only: its topic bindings carry a
        // pattern; anything else routes as direct.
        let topic = self
            .collections
            .routing
            .find_one(doc! { "exchange": name, "pattern": { "$type": "string" } })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(driver("reading bindings"))?;
        Ok(topic.map(|_| Exchange::topic(name)))
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.collections
            .routing
            .delete_many(doc! { "exchange": name })
            .await
            .map_err(driver("deleting an exchange's bindings"))?;
        self.collections
            .exchanges
            .delete_one(doc! { "_id": name })
            .await
            .map_err(driver("deleting an exchange"))?;
        self.broadcast.forget_exchange(name);
        Ok(())
    }

    async fn bind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        let kind = self
            .exchange_kind(exchange)
            .await?
            .unwrap_or(ExchangeType::Direct);
        let lookup = doc! {
            "exchange": exchange,
            "queue": &binding.queue,
            "routing_key": &binding.routing_key,
            "pattern": binding_pattern(kind, &binding.routing_key),
        };
        let mut data = lookup.clone();
        if !binding.arguments.is_empty() {
            data.insert("arguments", arguments_to_bson(&binding.arguments));
        }
        if self.config.ttl {
            let expires = self
                .queue_declaration(&binding.queue)
                .await?
                .and_then(|q| q.expires);
            let at = expires.map_or(Bson::Null, |e| {
                Bson::DateTime(after_millis(DateTime::now(), e.as_millis() as u64))
            });
            data.insert("expire_at", at);
        }
        self.collections
            .routing
            .update_one(lookup, doc! { "$set": data })
            .upsert(true)
            .await
            .map_err(driver("binding a queue"))?;
        if kind == ExchangeType::Fanout {
            self.broadcast.subscribe(exchange, &binding.queue).await?;
        }
        Ok(())
    }

    async fn unbind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        self.collections
            .routing
            .delete_many(doc! {
                "exchange": exchange,
                "queue": &binding.queue,
                "routing_key": &binding.routing_key,
            })
            .await
            .map_err(driver("unbinding a queue"))?;
        self.broadcast.unsubscribe(exchange, &binding.queue);
        Ok(())
    }

    async fn bindings(&self, exchange: &str) -> Result<Vec<QueueBinding>> {
        let routes: Vec<Document> = self
            .collections
            .routing
            .find(doc! { "exchange": exchange })
            .await
            .map_err(driver("reading bindings"))?
            .try_collect()
            .await
            .map_err(driver("reading bindings"))?;
        let mut bindings: Vec<QueueBinding> = Vec::with_capacity(routes.len());
        for route in routes {
            let (Ok(queue), Ok(routing_key)) =
                (route.get_str("queue"), route.get_str("routing_key"))
            else {
                continue;
            };
            let arguments = route
                .get_document("arguments")
                .map(arguments_from_bson)
                .unwrap_or_default();
            let binding = QueueBinding::new(queue, routing_key).with_arguments(arguments);
            if !bindings.contains(&binding) {
                bindings.push(binding);
            }
        }
        Ok(bindings)
    }

    async fn put_fanout(
        &self,
        exchange: &str,
        _routing_key: &str,
        envelope: &Envelope,
    ) -> Result<bool> {
        self.broadcast.publish(exchange, envelope).await?;
        Ok(true)
    }

    fn polling_interval(&self) -> Duration {
        self.config.polling_interval.max(Duration::from_millis(10)) * 5
    }

    async fn close(&self) -> Result<()> {
        if let Some(renewal) = &self.renewal {
            renewal.abort();
        }
        self.broadcast.shutdown();
        self.watch.stop();
        self.client.clone().shutdown().immediate(true).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(id: ObjectId, priority: u8) -> Fetched {
        let payload = format!(r#"{{"body": "", "properties": {{"priority": {priority}}}}}"#);
        Fetched::from_json(
            "q",
            format!("{MESSAGE_RECEIPT}{}:lease", id.to_hex()),
            payload.as_bytes(),
        )
    }

    #[test]
    fn a_handed_over_message_sorts_into_claim_order() {
        let (a, b, c) = (ObjectId::new(), ObjectId::new(), ObjectId::new());
        let broadcast = Fetched::from_json("q", format!("{RECEIPT_PREFIX}1"), b"{}");
        // Stored before `b` and `c`, handed over while a poll claimed them.
        let taken = [broadcast, fetched(b, 0), fetched(c, 0)];
        let mut keys: Vec<(i32, String)> = taken
            .iter()
            .map(|f| (claim_key(f).0, claim_key(f).1.to_owned()))
            .collect();
        let handed = fetched(a, 0);
        let key = claim_key(&handed);
        let at = taken.partition_point(|f| claim_key(f) <= key);
        assert_eq!(at, 1, "after the broadcast, before b and c");
        keys.insert(at, (key.0, key.1.to_owned()));
        assert!(keys.windows(2).all(|w| w[0] <= w[1]));
        // A higher priority goes first; a lower one last.
        assert_eq!(
            taken.partition_point(|f| claim_key(f) <= claim_key(&fetched(a, 9))),
            1
        );
        let late = fetched(ObjectId::new(), 0);
        assert_eq!(
            taken.partition_point(|f| claim_key(f) <= claim_key(&late)),
            3
        );
    }
}
