//! Reserving connections. A job reserved by a connection can only be
//! deleted, released, buried or touched by that same connection, and a
//! connection blocked in `reserve-with-timeout` reads no other command until
//! the reserve returns. So each reserver is one connection that holds its
//! reserved jobs until they are settled, and a settle that finds it blocked
//! interrupts the reserve: it puts a tiny "wake" job into a tube only that
//! connection watches, the reserve returns it at once, and the settle runs.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use kombu_core::{Error, ErrorKind, Result};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::pool::{fill, Pool, Slot, Taken};
use crate::protocol::{Job, Reserved, Stats};

/// The body of a wake job (never a kombu envelope, which starts with `{`).
pub(crate) const WAKE_BODY: &[u8] = b"kombu-beanstalk:wake";

/// How long after a touched job's deadline an idle connection nudges the
/// server (see [`Reserver::touch`]).
const NUDGE_MARGIN: Duration = Duration::from_millis(100);

/// A job reserved by a fetch, with its statistics.
pub(crate) struct ReservedJob {
    pub(crate) job: Job,
    pub(crate) stats: Stats,
    /// The connection generation that holds it.
    pub(crate) generation: u64,
}

/// One reserving connection.
pub(crate) struct Reserver {
    pool: Arc<Pool>,
    slot: Mutex<Slot>,
    wake_tube: String,
    /// Bumped at each new connection: receipts of an older one are dead.
    generation: AtomicU64,
    /// A fetch holds this reserver.
    pub(crate) busy: AtomicBool,
    /// The queues its last fetch watched (to reuse a reserver that already
    /// watches the right tubes).
    pub(crate) last_queues: std::sync::Mutex<Vec<String>>,
    /// Settles waiting for the connection.
    waiting: AtomicUsize,
    /// A reserve that may block is in flight.
    blocking: AtomicBool,
    /// A wake job was sent for the reserve in flight.
    woken: AtomicBool,
    /// Wake jobs put and not yet consumed.
    wakes: std::sync::Mutex<Vec<u64>>,
}

impl Reserver {
    pub(crate) fn new(pool: Arc<Pool>) -> Self {
        let wake_tube = format!("_kombu.wake.{}", uuid::Uuid::new_v4().simple());
        Reserver {
            pool,
            slot: Mutex::new(None),
            wake_tube,
            generation: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            last_queues: std::sync::Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
            blocking: AtomicBool::new(false),
            woken: AtomicBool::new(false),
            wakes: std::sync::Mutex::new(Vec::new()),
        }
    }

    async fn take<'a>(&self, guard: tokio::sync::MutexGuard<'a, Slot>) -> Result<Taken<'a>> {
        let fresh = guard.as_ref().is_none_or(|c| c.is_broken());
        let mut taken = fill(self.pool.server(), guard).await?;
        if fresh {
            self.generation.fetch_add(1, SeqCst);
            let conn = taken.conn();
            conn.watch(&self.wake_tube).await?;
            conn.ignore("default").await?;
        }
        Ok(taken)
    }

    /// The connection for a settle (delete, release, bury, touch), waking
    /// a blocked reserve when needed.
    async fn for_settle(&self, generation: u64) -> Result<Taken<'_>> {
        self.waiting.fetch_add(1, SeqCst);
        if self.blocking.load(SeqCst) && !self.woken.swap(true, SeqCst) {
            if let Err(err) = self.wake().await {
                tracing::warn!(error = %err, "could not wake a blocked beanstalk reserve");
            }
        }
        let guard = self.slot.lock().await;
        self.waiting.fetch_sub(1, SeqCst);
        let alive = guard.as_ref().is_some_and(|c| !c.is_broken());
        if !alive || self.generation.load(SeqCst) != generation {
            return Err(Error::new(
                ErrorKind::ConnectionLost,
                "the beanstalk connection that reserved this job was lost: the server \
                 released the job, it will be delivered again",
            ));
        }
        self.take(guard).await
    }

    async fn wake(&self) -> Result<()> {
        let mut taken = self.pool.get().await?;
        let id = taken
            .conn()
            .put_in(&self.wake_tube, 0, 0, 10, WAKE_BODY)
            .await?;
        self.wakes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
        Ok(())
    }

    /// Reserve the next job of `queues`, waiting up to `wait`.
    pub(crate) async fn fetch(
        &self,
        queues: &[String],
        wait: Duration,
    ) -> Result<Option<ReservedJob>> {
        let deadline = Instant::now() + wait;
        let mut tubes: Vec<String> = Vec::with_capacity(queues.len() + 1);
        tubes.push(self.wake_tube.clone());
        for q in queues {
            if !tubes.contains(q) {
                tubes.push(q.clone());
            }
        }
        *self.last_queues.lock().unwrap_or_else(|e| e.into_inner()) = queues.to_vec();
        loop {
            let guard = self.slot.lock().await;
            let mut taken = self.take(guard).await?;
            let conn = taken.conn();
            conn.set_watched(&tubes).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            let mut seconds = left.as_secs() as u32 + u32::from(left.subsec_nanos() > 0);
            self.woken.store(false, SeqCst);
            self.blocking.store(true, SeqCst);
            if self.waiting.load(SeqCst) > 0 {
                seconds = 0;
            }
            let answer = conn.reserve_with_timeout(seconds).await;
            self.blocking.store(false, SeqCst);
            match answer? {
                Reserved::Job(job) if job.body == WAKE_BODY => {
                    conn.delete(job.id).await?;
                    self.wakes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|id| *id != job.id);
                }
                Reserved::Job(job) => {
                    let stats = conn.stats_job(job.id).await?.unwrap_or_default();
                    self.drop_wakes(conn).await;
                    let generation = self.generation.load(SeqCst);
                    return Ok(Some(ReservedJob {
                        job,
                        stats,
                        generation,
                    }));
                }
                Reserved::TimedOut if seconds > 0 => {
                    self.drop_wakes(conn).await;
                    return Ok(None);
                }
                Reserved::TimedOut => {}
                Reserved::DeadlineSoon => {
                    drop(taken);
                    let pause = Duration::from_millis(200).min(left);
                    tokio::time::sleep(pause).await;
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            // Let waiting settles in (the lock is fair), then reserve again.
            tokio::task::yield_now().await;
        }
    }

    /// Delete wake jobs that were not consumed (best effort).
    async fn drop_wakes(&self, conn: &mut crate::protocol::Conn) {
        let ids = std::mem::take(&mut *self.wakes.lock().unwrap_or_else(|e| e.into_inner()));
        for id in ids {
            let _ = conn.delete(id).await;
        }
    }

    /// The error for a settle of a job this connection no longer holds.
    pub(crate) fn gone(id: u64, what: &str) -> Error {
        Error::new(
            ErrorKind::NotFound,
            format!(
                "cannot {what} beanstalk job {id}: it is no longer reserved by this consumer \
                 (its ttr ran out, or it was already settled)"
            ),
        )
    }

    /// Delete a job this reserver holds.
    pub(crate) async fn delete(&self, generation: u64, id: u64) -> Result<()> {
        let mut taken = self.for_settle(generation).await?;
        if taken.conn().delete(id).await? {
            Ok(())
        } else {
            Err(Self::gone(id, "delete"))
        }
    }

    /// Delete jobs this reserver holds, pipelined (up to `most` a round
    /// trip): for each, true when deleted, false when no longer held.
    pub(crate) async fn delete_many(
        &self,
        generation: u64,
        ids: &[u64],
        most: usize,
    ) -> Result<Vec<bool>> {
        let mut taken = self.for_settle(generation).await?;
        let mut deleted = Vec::with_capacity(ids.len());
        for some in ids.chunks(most.max(1)) {
            deleted.extend(taken.conn().delete_pipelined(some).await?);
        }
        Ok(deleted)
    }

    /// Release a job this reserver holds.
    pub(crate) async fn release(
        &self,
        generation: u64,
        id: u64,
        pri: u32,
        delay: u32,
    ) -> Result<()> {
        let mut taken = self.for_settle(generation).await?;
        if taken.conn().release(id, pri, delay).await? {
            Ok(())
        } else {
            Err(Self::gone(id, "release"))
        }
    }

    /// Bury a job this reserver holds.
    pub(crate) async fn bury(&self, generation: u64, id: u64, pri: u32) -> Result<()> {
        let mut taken = self.for_settle(generation).await?;
        if taken.conn().bury(id, pri).await? {
            Ok(())
        } else {
            Err(Self::gone(id, "bury"))
        }
    }

    /// Touch a job this reserver holds (its time to run is `ttr`).
    ///
    /// beanstalkd 1.12 may then miss the job's new deadline while this
    /// connection sends nothing (a touched job stayed reserved with a
    /// negative `time-left` for as long as its connection was idle:
    /// beanstalkd issues #262 and #380). So once the new deadline has
    /// passed, an idle connection sends one cheap command, which makes the
    /// server look at its jobs again and release the job if it is still
    /// held: the ttr means what beanstalk documents.
    pub(crate) async fn touch(
        self: &Arc<Self>,
        generation: u64,
        id: u64,
        ttr: Duration,
    ) -> Result<()> {
        let mut taken = self.for_settle(generation).await?;
        if !taken.conn().touch(id).await? {
            return Err(Self::gone(id, "touch"));
        }
        drop(taken);
        let reserver = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(ttr + NUDGE_MARGIN).await;
            if let Some(reserver) = reserver.upgrade() {
                reserver.nudge(generation).await;
            }
        });
        Ok(())
    }

    /// Send one cheap command on this connection if it is idle (not in a
    /// reserve, not in use) and still the one of `generation`.
    async fn nudge(&self, generation: u64) {
        if self.blocking.load(SeqCst) {
            // A reserve under way: the server watches its deadlines.
            return;
        }
        let Ok(mut guard) = self.slot.try_lock() else {
            return; // in use: that command does it
        };
        if self.generation.load(SeqCst) != generation {
            return;
        }
        let Some(conn) = guard.as_mut().filter(|c| !c.is_broken()) else {
            return;
        };
        // The connection's own I/O timeout bounds it.
        if let Err(err) = conn.list_tube_used().await {
            tracing::debug!(error = %err, "beanstalk: the nudge after a touch failed");
        }
    }

    /// Drop the connection: the server releases every job it held.
    pub(crate) async fn close(&self) {
        self.waiting.fetch_add(1, SeqCst);
        if self.blocking.load(SeqCst) && !self.woken.swap(true, SeqCst) {
            let _ = self.wake().await;
        }
        let mut guard = self.slot.lock().await;
        self.waiting.fetch_sub(1, SeqCst);
        if let Some(conn) = guard.as_mut() {
            self.drop_wakes(conn).await;
        }
        *guard = None;
    }
}
