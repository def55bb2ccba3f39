//! The [`VirtualBackend`] of `beanstalk://`: a queue is a tube, a message is
//! a job whose body is kombu's envelope JSON.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kombu_core::spi::{async_trait, Fetched, QueueBinding, Receipt, StoredMessage, VirtualBackend};
use kombu_core::{Capabilities, Envelope, Error, ErrorKind, Exchange, Queue, Result};
use serde_json::Value;
use tokio::sync::Notify;

use crate::chunks;
use crate::pool::{Pool, Server};
use crate::protocol::{check_tube_name, Conn, PeekState, PutJob};
use crate::reserver::Reserver;
use crate::settings::Settings;
use crate::table::{BindingEntry, ExchangeEntry, TableStore};

mod batch;

/// Header set on every delivered message: the beanstalk job id (for
/// [`BeanstalkBackend::touch`], `kick-job`, `stats-job`).
pub const JOB_ID_HEADER: &str = "x-beanstalk-job-id";

/// Header a publisher sets to delay a message: milliseconds (rounded up to
/// whole seconds, beanstalk's unit), as RabbitMQ's delayed-message plugin.
pub const DELAY_HEADER: &str = "x-delay";

/// Tube names starting with this are the transport's own.
pub const RESERVED_PREFIX: &str = "_kombu.";

/// A job reserved by one of our reservers and not yet settled.
struct Held {
    reserver: Arc<Reserver>,
    generation: u64,
    pri: u32,
    /// The job's time to run, in seconds.
    ttr: u32,
    chunks: Vec<u64>,
}

/// The beanstalkd [`VirtualBackend`]. Reach it from a connection with
/// `conn.extension::<BeanstalkBackend>().await?` for beanstalk's own operations: [`kick`](Self::kick),
/// [`kick_job`](Self::kick_job), [`touch`](Self::touch),
/// [`buried`](Self::buried), [`peek_buried`](Self::peek_buried).
pub struct BeanstalkBackend {
    settings: Settings,
    pool: Arc<Pool>,
    reservers: Mutex<Vec<Arc<Reserver>>>,
    reserver_free: Notify,
    table: TableStore,
    max_job_size: usize,
    held: Mutex<HashMap<u64, Held>>,
    closed: AtomicBool,
    /// The heartbeat's own connection: never blocked in a reserve, never
    /// queued behind other commands.
    heartbeat: tokio::sync::Mutex<crate::pool::Slot>,
}

impl std::fmt::Debug for BeanstalkBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let server = self.pool.server();
        f.debug_struct("BeanstalkBackend")
            .field("server", &format!("{}:{}", server.host, server.port))
            .field("settings", &self.settings)
            .finish()
    }
}

pub(crate) fn capabilities() -> Capabilities {
    Capabilities::new(kombu_core::TransportKind::Virtual)
        .with_fanout_note("binding table kept in beanstalkd")
        .with_shared_declarations(true)
        .with_persistent(false)
        .with_delayed_delivery(true)
        .with_lease_extension(true)
        .with_delivery_limit(true)
}

/// Check a queue name can be a tube and is not one of ours.
fn check_queue(name: &str) -> Result<()> {
    check_tube_name(name)?;
    if name.starts_with(RESERVED_PREFIX) {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "{name:?}: tube names starting with {RESERVED_PREFIX:?} are kombu-beanstalk's own"
            ),
        ));
    }
    Ok(())
}

fn receipt_id(receipt: &Receipt) -> Result<u64> {
    receipt.parse().map_err(|_| {
        Error::new(
            ErrorKind::PreconditionFailed,
            format!("{receipt:?} is not a beanstalk job id"),
        )
    })
}

fn delay_seconds(envelope: &Envelope) -> u32 {
    let ms = match envelope.headers.get(DELAY_HEADER) {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0.0),
        _ => 0.0,
    };
    if !ms.is_finite() || ms <= 0.0 {
        return 0;
    }
    (ms / 1000.0).ceil().min(f64::from(u32::MAX)) as u32
}

/// The job delay, in whole seconds, of a message due at `not_before_ms`
/// (Unix ms) put at `now_ms`: rounded up, so the job never becomes ready
/// before its time (beanstalkd counts delays in seconds).
pub(crate) fn delay_until(not_before_ms: u64, now_ms: u64) -> u32 {
    let left = not_before_ms.saturating_sub(now_ms);
    left.div_ceil(1000).min(u64::from(u32::MAX)) as u32
}

/// Now, in Unix milliseconds.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl BeanstalkBackend {
    pub(crate) async fn connect(server: Server, settings: Settings) -> Result<Self> {
        let pool = Arc::new(Pool::new(server.clone(), settings.pool_size));
        let stats = pool.get().await?.conn().stats().await?;
        let max_job_size = match stats.number("max-job-size") {
            0 => 65_535,
            n => n as usize,
        };
        Ok(BeanstalkBackend {
            table: TableStore::new(server, max_job_size),
            settings,
            pool,
            reservers: Mutex::new(Vec::new()),
            reserver_free: Notify::new(),
            max_job_size,
            held: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            heartbeat: tokio::sync::Mutex::new(None),
        })
    }

    /// How long one command may take: the `socket_timeout` for its answer
    /// (`io`), plus the `connect_timeout` when it has to open a connection
    /// first.
    fn command_bound(&self, io: Duration) -> Duration {
        let connect = self.pool.server().connect_timeout;
        io + connect.unwrap_or(crate::protocol::DEFAULT_IO_TIMEOUT)
    }

    /// Check the server answers: `list-tube-used` on a connection of the
    /// check's own (never one blocked in a reserve), within the
    /// `socket_timeout` (and `connect_timeout` to reconnect it). A failure
    /// is a connection error (`ConnectionLost`, `ConnectionRefused` or
    /// `Timeout`): the heartbeat of the core's virtual transport.
    async fn ping_server(&self) -> Result<()> {
        let server = self.pool.server();
        // A check still running (stuck on a hung server) counts against
        // this one's bound too; with `socket_timeout=0` the default's.
        let io = server
            .io_timeout
            .unwrap_or(crate::protocol::DEFAULT_IO_TIMEOUT);
        let bound = self.command_bound(io);
        let check = async {
            let guard = self.heartbeat.lock().await;
            let mut taken = crate::pool::fill(server, guard).await?;
            taken.conn().list_tube_used().await.map(|_| ())
        };
        match tokio::time::timeout(bound, check).await {
            Ok(result) => result.map_err(|err| match err.kind() {
                ErrorKind::ConnectionLost | ErrorKind::ConnectionRefused | ErrorKind::Timeout => {
                    err
                }
                _ => Error::new(
                    ErrorKind::ConnectionLost,
                    format!("beanstalk heartbeat failed: {err}"),
                ),
            }),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "beanstalkd did not answer the heartbeat within {:.1} s",
                    bound.as_secs_f64()
                ),
            )),
        }
    }

    fn ensure_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::new(
                ErrorKind::Closed,
                "the beanstalk transport is closed",
            ))
        } else {
            Ok(())
        }
    }

    /// The server's `max-job-size`: larger envelopes are stored in chunks.
    pub fn max_job_size(&self) -> usize {
        self.max_job_size
    }

    /// The beanstalk priority a message priority maps to.
    pub fn beanstalk_priority(&self, priority: u8) -> u32 {
        self.settings.priority.to_beanstalk(priority)
    }

    fn take_reserver(&self, queues: &[String]) -> Option<Arc<Reserver>> {
        let mut list = self.reservers.lock().unwrap_or_else(|e| e.into_inner());
        let same =
            |r: &Arc<Reserver>| *r.last_queues.lock().unwrap_or_else(|e| e.into_inner()) == queues;
        let free = |r: &&Arc<Reserver>| !r.busy.load(Ordering::Acquire);
        let candidate = list
            .iter()
            .filter(free)
            .find(|r| same(r))
            .or_else(|| list.iter().find(free))
            .cloned();
        if let Some(r) = candidate {
            r.busy.store(true, Ordering::Release);
            return Some(r);
        }
        if list.len() < self.settings.max_reservers {
            let r = Arc::new(Reserver::new(self.pool.clone()));
            r.busy.store(true, Ordering::Release);
            list.push(r.clone());
            return Some(r);
        }
        None
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_held(&self, id: u64, what: &str) -> Result<Held> {
        self.held().remove(&id).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("cannot {what} beanstalk job {id}: this transport does not hold it"),
            )
        })
    }

    /// Restart the ttr of a job this transport holds reserved (a lease
    /// extension: a consumer working longer than `ttr` touches its job).
    /// `job_id` is the [`JOB_ID_HEADER`] of the delivered message.
    pub async fn touch(&self, job_id: u64) -> Result<()> {
        self.ensure_open()?;
        let (reserver, generation, ttr) = {
            let held = self.held();
            let h = held.get(&job_id).ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("cannot touch beanstalk job {job_id}: this transport does not hold it"),
                )
            })?;
            (h.reserver.clone(), h.generation, h.ttr)
        };
        reserver
            .touch(generation, job_id, Duration::from_secs(u64::from(ttr)))
            .await
    }

    /// Touch the job behind a delivered message.
    pub async fn touch_message(&self, message: &kombu_core::Message) -> Result<()> {
        let id = job_id(message).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("the message has no {JOB_ID_HEADER} header"),
            )
        })?;
        self.touch(id).await
    }

    /// Move up to `bound` buried jobs of `queue` back to ready (beanstalk's
    /// `kick`: when the tube has no buried job, delayed jobs are kicked
    /// instead). Returns how many moved.
    pub async fn kick(&self, queue: &str, bound: u64) -> Result<u64> {
        self.ensure_open()?;
        check_queue(queue)?;
        let mut taken = self.pool.get().await?;
        let conn = taken.conn();
        conn.use_tube(queue).await?;
        conn.kick(bound).await
    }

    /// Move one buried or delayed job back to ready; false when no such job.
    pub async fn kick_job(&self, job_id: u64) -> Result<bool> {
        self.ensure_open()?;
        self.pool.get().await?.conn().kick_job(job_id).await
    }

    /// Buried jobs in `queue` (rejected without requeue: the dead-letter view).
    pub async fn buried(&self, queue: &str) -> Result<u64> {
        self.ensure_open()?;
        check_queue(queue)?;
        let stats = self.pool.get().await?.conn().stats_tube(queue).await?;
        Ok(stats.map_or(0, |s| s.number("current-jobs-buried")))
    }

    /// Delayed jobs in `queue` (published with [`DELAY_HEADER`], or
    /// requeued with `requeue_delay`).
    pub async fn delayed(&self, queue: &str) -> Result<u64> {
        self.ensure_open()?;
        check_queue(queue)?;
        let stats = self.pool.get().await?.conn().stats_tube(queue).await?;
        Ok(stats.map_or(0, |s| s.number("current-jobs-delayed")))
    }

    /// The next buried job of `queue`: its id and envelope (the raw body
    /// as an error when it is not an envelope).
    pub async fn peek_buried(&self, queue: &str) -> Result<Option<(u64, Envelope)>> {
        self.ensure_open()?;
        check_queue(queue)?;
        let mut taken = self.pool.get().await?;
        let conn = taken.conn();
        conn.use_tube(queue).await?;
        let Some(job) = conn.peek_state(PeekState::Buried).await? else {
            return Ok(None);
        };
        let body = chunks::load(conn, job.body).await?;
        Ok(Some((job.id, Envelope::from_json(&body)?)))
    }

    /// Delete every job of `queue` in `state`; returns how many.
    async fn delete_all(&self, queue: &str, state: PeekState) -> Result<u64> {
        let mut taken = self.pool.get().await?;
        let conn = taken.conn();
        conn.use_tube(queue).await?;
        let mut count = 0;
        while let Some(job) = conn.peek_state(state).await? {
            if conn.delete(job.id).await? {
                chunks::discard(conn, &job.body).await;
                count += 1;
            } else {
                // Reserved by a consumer between the peek and the delete.
                tokio::task::yield_now().await;
            }
        }
        Ok(count)
    }
}

impl BeanstalkBackend {
    /// The beanstalk priority, delay and ttr of a message.
    fn job_params(&self, envelope: &Envelope, priority: u8) -> (u32, u32, u32) {
        let pri = self.settings.priority.to_beanstalk(priority);
        let delay = delay_seconds(envelope);
        let ttr = envelope
            .properties
            .get("ttr")
            .and_then(Value::as_u64)
            .map_or(self.settings.ttr, |t| {
                t.clamp(1, u64::from(u32::MAX)) as u32
            });
        (pri, delay, ttr)
    }

    /// Put one job into `queue` through `conn`, in chunks when it is
    /// larger than the server's `max-job-size`.
    async fn put_one(&self, conn: &mut Conn, queue: &str, job: PutJob<'_>) -> Result<()> {
        let stored = chunks::store(conn, job.body, self.max_job_size).await?;
        if let Err(err) = conn
            .put_in(queue, job.pri, job.delay, job.ttr, &stored)
            .await
        {
            chunks::discard(conn, &stored).await;
            return Err(err);
        }
        Ok(())
    }
}

/// The beanstalk job id of a delivered message (its [`JOB_ID_HEADER`]).
///
/// ```
/// # use kombu_core::{Delivery, DeliveryInfo, RawMessage};
/// let raw = RawMessage::new("x").header("x-beanstalk-job-id", 42);
/// # let _ = Delivery::new(1, raw.clone(), DeliveryInfo::default());
/// assert_eq!(kombu_beanstalk::job_id_of(&raw.headers), Some(42));
/// ```
pub fn job_id(message: &kombu_core::Message) -> Option<u64> {
    job_id_of(message.headers())
}

/// The beanstalk job id in message headers.
pub fn job_id_of(headers: &kombu_core::Headers) -> Option<u64> {
    match headers.get(JOB_ID_HEADER)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[async_trait]
impl VirtualBackend for BeanstalkBackend {
    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn ping(&self) -> Result<()> {
        self.ping_server().await
    }

    /// A command answers within `socket_timeout` (plus `connect_timeout`
    /// when it opens a connection first): the core's bound on one call.
    /// With `socket_timeout=0` the core's default (30 s) applies.
    fn operation_timeout(&self) -> Option<Duration> {
        let io = self.pool.server().io_timeout?;
        Some(self.command_bound(io))
    }

    async fn new_queue(&self, queue: &Queue) -> Result<()> {
        self.ensure_open()?;
        check_queue(&queue.name)?;
        let args = queue.declare_arguments();
        if self.table.read().await?.queues.get(&queue.name) == Some(&args) {
            return Ok(());
        }
        let name = queue.name.clone();
        self.table
            .update(|t| t.queues.insert(name.clone(), args.clone()).as_ref() != Some(&args))
            .await?;
        Ok(())
    }

    async fn queue_declaration(&self, queue: &str) -> Result<Option<Queue>> {
        self.ensure_open()?;
        Ok(self.table.read().await?.queue(queue))
    }

    async fn has_queue(&self, queue: &str) -> Result<bool> {
        self.ensure_open()?;
        check_queue(queue)?;
        if self.table.read().await?.queues.contains_key(queue) {
            return Ok(true);
        }
        Ok(self
            .pool
            .get()
            .await?
            .conn()
            .stats_tube(queue)
            .await?
            .is_some())
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        self.ensure_open()?;
        check_queue(queue)?;
        self.table
            .update(|t| {
                let mut changed = t.queues.remove(queue).is_some();
                for list in t.bindings.values_mut() {
                    let before = list.len();
                    list.retain(|b| b.queue != queue);
                    changed |= list.len() != before;
                }
                t.bindings.retain(|_, list| !list.is_empty());
                changed
            })
            .await?;
        for state in [PeekState::Ready, PeekState::Delayed, PeekState::Buried] {
            self.delete_all(queue, state).await?;
        }
        Ok(())
    }

    /// Ready and delayed jobs (delayed messages are purged too, as on the
    /// other transports); reserved and buried ones stay.
    async fn purge(&self, queue: &str) -> Result<u64> {
        self.ensure_open()?;
        check_queue(queue)?;
        let ready = self.delete_all(queue, PeekState::Ready).await?;
        Ok(ready + self.delete_all(queue, PeekState::Delayed).await?)
    }

    async fn size(&self, queue: &str) -> Result<u64> {
        self.ensure_open()?;
        check_queue(queue)?;
        let stats = self.pool.get().await?.conn().stats_tube(queue).await?;
        Ok(stats.map_or(0, |s| s.number("current-jobs-ready")))
    }

    async fn put(&self, queue: &str, envelope: &Envelope, priority: u8) -> Result<()> {
        self.ensure_open()?;
        check_queue(queue)?;
        let (pri, delay, ttr) = self.job_params(envelope, priority);
        let body = if envelope.headers.contains_key(JOB_ID_HEADER) {
            let mut clean = envelope.clone();
            clean.headers.shift_remove(JOB_ID_HEADER);
            clean.to_json()
        } else {
            envelope.to_json()
        };
        let mut taken = self.pool.get().await?;
        let job = PutJob {
            pri,
            delay,
            ttr,
            body: &body,
        };
        self.put_one(taken.conn(), queue, job).await
    }

    /// A job put with beanstalkd's own delay: the seconds left until
    /// `not_before_ms`, rounded up (never early; ready up to a second
    /// late). The job is delayed in its tube until then, on the server.
    async fn put_delayed(
        &self,
        queue: &str,
        message: StoredMessage,
        priority: u8,
        not_before_ms: u64,
    ) -> Result<()> {
        self.ensure_open()?;
        check_queue(queue)?;
        let mut envelope = message.into_envelope();
        envelope.headers.shift_remove(JOB_ID_HEADER);
        let (pri, header_delay, ttr) = self.job_params(&envelope, priority);
        let body = envelope.to_json();
        let mut taken = self.pool.get().await?;
        // Measured after a connection is at hand, just before the put.
        let delay = delay_until(not_before_ms, now_ms()).max(header_delay);
        let job = PutJob {
            pri,
            delay,
            ttr,
            body: &body,
        };
        self.put_one(taken.conn(), queue, job).await
    }

    /// Pipelined puts on one connection (the `batch` module): one round
    /// trip for up to 256 messages; a message that needs chunks goes
    /// alone, in its turn. Any job not stored is an error (the others stay
    /// stored).
    async fn put_many(&self, queue: &str, messages: Vec<(Envelope, u8)>) -> Result<()> {
        self.ensure_open()?;
        check_queue(queue)?;
        self.put_batch(queue, messages).await
    }

    async fn fetch(&self, queues: &[String], wait: Duration) -> Result<Option<Fetched>> {
        self.ensure_open()?;
        for q in queues {
            check_queue(q)?;
        }
        if queues.is_empty() {
            tokio::time::sleep(wait).await;
            return Ok(None);
        }
        let deadline = tokio::time::Instant::now() + wait;
        let reserver = loop {
            let freed = self.reserver_free.notified();
            if let Some(r) = self.take_reserver(queues) {
                break r;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Ok(None);
            }
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let reserved = reserver.fetch(queues, left).await;
        reserver.busy.store(false, Ordering::Release);
        self.reserver_free.notify_one();
        let Some(reserved) = reserved? else {
            return Ok(None);
        };
        let id = reserved.job.id;
        let queue = reserved
            .stats
            .text("tube")
            .map(str::to_owned)
            .unwrap_or_else(|| queues[0].clone());
        // `stats-job` came with the reserve: its reserves before this one
        // are the job's returns (released, or its ttr ran out).
        let reserves = reserved.stats.number("reserves");
        let redelivered = reserves > 1;
        let pri = reserved.stats.number("pri") as u32;
        let ttr = reserved.stats.number("ttr") as u32;
        let stored = reserved.job.body;
        let chunk_ids = chunks::chunk_ids(&stored);
        self.held().insert(
            id,
            Held {
                reserver,
                generation: reserved.generation,
                pri,
                ttr,
                chunks: chunk_ids.clone(),
            },
        );
        let body = if chunk_ids.is_empty() {
            stored
        } else {
            let mut taken = self.pool.get().await?;
            match chunks::load(taken.conn(), stored.clone()).await {
                Ok(body) => body,
                Err(err) => {
                    tracing::warn!(error = %err, job = id, "large beanstalk message lost chunks");
                    stored
                }
            }
        };
        let receipt = id.to_string();
        Ok(Some(
            match Envelope::from_json(&body) {
                Ok(mut envelope) => {
                    if redelivered {
                        envelope.mark_redelivered();
                    }
                    envelope.headers.insert(JOB_ID_HEADER.into(), id.into());
                    Fetched::new(queue, receipt, envelope)
                }
                Err(_) => Fetched::from_json(queue, receipt, &body),
            }
            .with_returned(reserves.saturating_sub(1)),
        ))
    }

    async fn ack(&self, _queue: &str, receipt: &Receipt) -> Result<()> {
        let id = receipt_id(receipt)?;
        let held = self.take_held(id, "delete")?;
        held.reserver.delete(held.generation, id).await?;
        if !held.chunks.is_empty() {
            let mut taken = self.pool.get().await?;
            let conn = taken.conn();
            for chunk in held.chunks {
                let _ = conn.delete(chunk).await;
            }
        }
        Ok(())
    }

    /// Pipelined deletes on each reserving connection that holds some of
    /// the jobs (the `batch` module), with the outcomes of
    /// [`ack`](Self::ack) for each; every one is tried, the first error is
    /// returned.
    async fn ack_many(&self, acks: &[(String, Receipt)]) -> Result<()> {
        self.ack_batch(acks).await
    }

    /// beanstalk's `touch`: the job's time to run starts again, so it
    /// stays reserved for its whole ttr from now. beanstalkd has no other
    /// length: `by` is the ttr whatever it asks for (the `Worker` touches
    /// every half ttr; a caller keeping a job longer touches again). A job
    /// this transport no longer holds (its ttr ran out and beanstalkd
    /// released it, or it was settled) is a `PreconditionFailed` error.
    async fn extend_lease(&self, queue: &str, receipt: &Receipt, by: Duration) -> Result<()> {
        let _ = by;
        let id = receipt_id(receipt)?;
        self.touch(id).await.map_err(|err| {
            if matches!(
                err.kind(),
                ErrorKind::NotFound | ErrorKind::PreconditionFailed
            ) {
                Error::new(
                    ErrorKind::PreconditionFailed,
                    format!(
                        "beanstalk: extending the lease on a message of {queue:?}: {err}; it \
                         may be delivered again"
                    ),
                )
            } else {
                err
            }
        })
    }

    /// The `ttr` option: the time to run kombu-rs puts jobs with (a
    /// message's `ttr` property overrides it for that job).
    fn lease_duration(&self) -> Option<Duration> {
        Some(Duration::from_secs(u64::from(self.settings.ttr)))
    }

    async fn requeue(&self, _queue: &str, receipt: &Receipt, _envelope: &Envelope) -> Result<()> {
        // Release keeps the job (id, priority, body): the next reserve of it
        // counts `reserves` > 1, which marks it redelivered.
        let id = receipt_id(receipt)?;
        let held = self.take_held(id, "release")?;
        held.reserver
            .release(held.generation, id, held.pri, self.settings.requeue_delay)
            .await
    }

    async fn discard(&self, queue: &str, receipt: &Receipt, _envelope: &Envelope) -> Result<()> {
        // With a dead-letter exchange the channel has re-published the
        // message: the job goes. Without one it is buried, the dead-letter
        // view that `kick` empties.
        let dead_lettered = self
            .table
            .read()
            .await?
            .queue(queue)
            .is_some_and(|q| q.dead_letter_exchange.is_some());
        if dead_lettered {
            return self.ack(queue, receipt).await;
        }
        let id = receipt_id(receipt)?;
        let held = self.take_held(id, "bury")?;
        held.reserver.bury(held.generation, id, held.pri).await
    }

    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        self.ensure_open()?;
        let entry = ExchangeEntry {
            kind: exchange.kind.as_str().to_owned(),
            durable: exchange.durable,
            auto_delete: exchange.auto_delete,
            arguments: exchange.arguments.clone(),
        };
        if self.table.read().await?.exchanges.get(&exchange.name) == Some(&entry) {
            return Ok(());
        }
        self.table
            .update(|t| {
                t.exchanges
                    .insert(exchange.name.clone(), entry.clone())
                    .as_ref()
                    != Some(&entry)
            })
            .await?;
        Ok(())
    }

    async fn exchange(&self, name: &str) -> Result<Option<Exchange>> {
        self.ensure_open()?;
        Ok(self.table.read().await?.exchange(name))
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.ensure_open()?;
        self.table
            .update(|t| t.exchanges.remove(name).is_some() | t.bindings.remove(name).is_some())
            .await?;
        Ok(())
    }

    async fn bind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        self.ensure_open()?;
        check_queue(&binding.queue)?;
        let entry = BindingEntry {
            queue: binding.queue.clone(),
            routing_key: binding.routing_key.clone(),
            arguments: binding.arguments.clone(),
        };
        let present = |t: &crate::table::Table| {
            t.bindings
                .get(exchange)
                .is_some_and(|list| list.contains(&entry))
        };
        if present(&self.table.read().await?) {
            return Ok(());
        }
        self.table
            .update(|t| {
                if present(t) {
                    return false;
                }
                t.bindings
                    .entry(exchange.to_owned())
                    .or_default()
                    .push(entry.clone());
                true
            })
            .await?;
        Ok(())
    }

    async fn unbind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        self.ensure_open()?;
        let entry = BindingEntry {
            queue: binding.queue.clone(),
            routing_key: binding.routing_key.clone(),
            arguments: binding.arguments.clone(),
        };
        self.table
            .update(|t| {
                let Some(list) = t.bindings.get_mut(exchange) else {
                    return false;
                };
                let before = list.len();
                list.retain(|b| *b != entry);
                let changed = list.len() != before;
                if list.is_empty() {
                    t.bindings.remove(exchange);
                }
                changed
            })
            .await?;
        Ok(())
    }

    async fn bindings(&self, exchange: &str) -> Result<Vec<QueueBinding>> {
        self.ensure_open()?;
        Ok(self.table.read().await?.bindings(exchange))
    }

    fn polling_interval(&self) -> Duration {
        self.settings.polling_interval
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let reservers: Vec<Arc<Reserver>> = self
            .reservers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for r in reservers {
            r.close().await;
        }
        self.held().clear();
        self.pool.close().await;
        self.table.close().await;
        *self.heartbeat.lock().await = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::delay_until;

    #[test]
    fn delays_round_up_to_whole_seconds() {
        assert_eq!(delay_until(10_000, 10_000), 0);
        assert_eq!(delay_until(9_000, 10_000), 0, "already due");
        assert_eq!(delay_until(10_001, 10_000), 1);
        assert_eq!(delay_until(12_000, 10_000), 2);
        assert_eq!(delay_until(12_001, 10_000), 3);
        assert_eq!(delay_until(u64::MAX, 0), u32::MAX);
    }
}
