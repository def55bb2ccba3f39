//! The declaration table (exchanges, bindings, queue arguments) kept in
//! beanstalkd itself, so that every process routes with the same bindings.
//!
//! The table is the body of the one job of the tube [`META_TUBE`]. Readers
//! `peek-ready` it. A writer takes it exclusively by reserving it, writes the
//! new version as a new job, then deletes the old one: reserve is the lock,
//! and a writer that dies holding it gives it back (the server releases the
//! jobs of a closed connection, or after the ttr of a hung one). Each version
//! is put with priority `u32::MAX - version`, so the newest version is the
//! one `peek-ready` and `reserve` see first; a stale duplicate (two first
//! writers racing, or a writer that died between its put and its delete) is
//! merged or dropped by the next writer.

use std::collections::BTreeMap;
use std::time::Duration;

use kombu_core::routing::QueueBinding;
use kombu_core::{Arguments, Error, ErrorKind, Exchange, ExchangeType, Queue, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::chunks;
use crate::pool::{fill, Server, Slot};
use crate::protocol::{Conn, PeekState, Reserved};

/// The tube holding the table.
pub(crate) const META_TUBE: &str = "_kombu.meta";

/// Ttr of the table job: a writer that hangs holding it loses it after this.
const META_TTR: u32 = 10;

/// How long a reader or writer waits for a busy table before giving up.
const TABLE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ExchangeEntry {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) durable: bool,
    #[serde(default)]
    pub(crate) auto_delete: bool,
    #[serde(default)]
    pub(crate) arguments: Arguments,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct BindingEntry {
    pub(crate) queue: String,
    pub(crate) routing_key: String,
    #[serde(default)]
    pub(crate) arguments: Arguments,
}

/// The whole table.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Table {
    #[serde(default)]
    pub(crate) version: u64,
    #[serde(default)]
    pub(crate) exchanges: BTreeMap<String, ExchangeEntry>,
    #[serde(default)]
    pub(crate) bindings: BTreeMap<String, Vec<BindingEntry>>,
    /// Queue declarations as AMQP arguments (`x-message-ttl`, ...).
    #[serde(default)]
    pub(crate) queues: BTreeMap<String, Arguments>,
}

impl Table {
    pub(crate) fn exchange(&self, name: &str) -> Option<Exchange> {
        let entry = self.exchanges.get(name)?;
        let kind: ExchangeType = entry.kind.parse().unwrap_or(ExchangeType::Direct);
        let mut exchange = Exchange::new(name, kind)
            .durable(entry.durable)
            .auto_delete(entry.auto_delete);
        exchange.arguments = entry.arguments.clone();
        Some(exchange)
    }

    pub(crate) fn bindings(&self, exchange: &str) -> Vec<QueueBinding> {
        self.bindings
            .get(exchange)
            .map(|list| {
                list.iter()
                    .map(|b| {
                        QueueBinding::new(&b.queue, &b.routing_key)
                            .with_arguments(b.arguments.clone())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn queue(&self, name: &str) -> Option<Queue> {
        self.queues
            .get(name)
            .map(|args| Queue::from_arguments(name, args))
    }

    /// Add what `other` has and this table lacks (two first versions).
    fn merge(&mut self, other: Table) {
        for (k, v) in other.exchanges {
            self.exchanges.entry(k).or_insert(v);
        }
        for (k, list) in other.bindings {
            let mine = self.bindings.entry(k).or_default();
            for b in list {
                if !mine.contains(&b) {
                    mine.push(b);
                }
            }
        }
        for (k, v) in other.queues {
            self.queues.entry(k).or_insert(v);
        }
    }

    fn parse(body: &[u8]) -> Result<Table> {
        serde_json::from_slice(body).map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                format!("the beanstalk declaration table ({META_TUBE}) is unreadable: {e}"),
            )
        })
    }
}

fn priority_of(version: u64) -> u32 {
    u32::MAX - version.min(u64::from(u32::MAX - 1)) as u32
}

fn jitter() -> Duration {
    let n = uuid::Uuid::new_v4().as_u128() as u64;
    Duration::from_micros(500 + n % 4000)
}

fn busy() -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!("the beanstalk declaration table ({META_TUBE}) stayed busy for {TABLE_WAIT:?}"),
    )
}

/// Reads and writes the table through one connection that uses and
/// watches only [`META_TUBE`].
pub(crate) struct TableStore {
    server: Server,
    slot: Mutex<Slot>,
    max_job_size: usize,
}

impl TableStore {
    pub(crate) fn new(server: Server, max_job_size: usize) -> Self {
        TableStore {
            server,
            slot: Mutex::new(None),
            max_job_size,
        }
    }

    async fn conn(&self) -> Result<crate::pool::Taken<'_>> {
        let mut taken = fill(&self.server, self.slot.lock().await).await?;
        let conn = taken.conn();
        conn.use_tube(META_TUBE).await?;
        conn.set_watched(&[META_TUBE.to_owned()]).await?;
        Ok(taken)
    }

    /// The current table (empty when none was ever written).
    pub(crate) async fn read(&self) -> Result<Table> {
        let deadline = Instant::now() + TABLE_WAIT;
        loop {
            {
                let mut taken = self.conn().await?;
                let conn = taken.conn();
                if let Some(job) = conn.peek_state(PeekState::Ready).await? {
                    let body = chunks::load(conn, job.body).await?;
                    return Table::parse(&body);
                }
                match conn.stats_tube(META_TUBE).await? {
                    None => return Ok(Table::default()),
                    Some(stats)
                        if stats.number("current-jobs-reserved") == 0
                            && stats.number("current-jobs-ready") == 0 =>
                    {
                        return Ok(Table::default())
                    }
                    // A writer holds it, or put its new version since our
                    // peek: look again.
                    Some(_) => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(busy());
            }
            tokio::time::sleep(jitter()).await;
        }
    }

    /// Change the table with `change` (which says whether it changed
    /// anything); returns the table as written.
    pub(crate) async fn update(&self, mut change: impl FnMut(&mut Table) -> bool) -> Result<Table> {
        let deadline = Instant::now() + TABLE_WAIT;
        loop {
            {
                let mut taken = self.conn().await?;
                let conn = taken.conn();
                match conn.reserve_with_timeout(0).await? {
                    Reserved::Job(job) => {
                        let others = conn
                            .stats_tube(META_TUBE)
                            .await?
                            .map_or(0, |s| s.number("current-jobs-reserved"));
                        if others > 1 {
                            // Another writer holds a second version: give
                            // this one back unchanged (same priority) and
                            // try again.
                            let body = chunks::load(conn, job.body.clone()).await?;
                            let version = Table::parse(&body).map_or(0, |t| t.version);
                            conn.release(job.id, priority_of(version), 0).await?;
                        } else {
                            return self.write_over(conn, job, &mut change).await;
                        }
                    }
                    Reserved::TimedOut => {
                        let stats = conn.stats_tube(META_TUBE).await?;
                        // Create the table only when the tube is empty: a
                        // version may have been put (ready) since our reserve.
                        let jobs = stats.map_or(0, |s| {
                            s.number("current-jobs-ready")
                                + s.number("current-jobs-reserved")
                                + s.number("current-jobs-delayed")
                                + s.number("current-jobs-buried")
                        });
                        if jobs == 0 {
                            let mut table = Table::default();
                            change(&mut table);
                            table.version = 1;
                            self.put(conn, &table).await?;
                            let ready = conn
                                .stats_tube(META_TUBE)
                                .await?
                                .map_or(0, |s| s.number("current-jobs-ready"));
                            if ready <= 1 {
                                return Ok(table);
                            }
                            // Another first writer raced us: the next round
                            // merges the two first versions (changes are
                            // idempotent, so applying ours again is harmless).
                        }
                    }
                    Reserved::DeadlineSoon => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(busy());
            }
            tokio::time::sleep(jitter()).await;
        }
    }

    async fn write_over(
        &self,
        conn: &mut Conn,
        held: crate::protocol::Job,
        change: &mut impl FnMut(&mut Table) -> bool,
    ) -> Result<Table> {
        let stored = held.body.clone();
        let body = chunks::load(conn, held.body).await?;
        let mut table = Table::parse(&body)?;
        // Fold in stale duplicates still ready in the tube.
        let mut duplicates = Vec::new();
        let mut merged = false;
        while let Some(other) = conn.peek_state(PeekState::Ready).await? {
            let Some(other) = conn.reserve_job(other.id).await? else {
                continue;
            };
            let other_body = chunks::load(conn, other.body.clone()).await?;
            if let Ok(other_table) = Table::parse(&other_body) {
                if other_table.version == table.version {
                    table.merge(other_table);
                    merged = true;
                }
            }
            duplicates.push(other);
        }
        let changed = change(&mut table) || merged;
        if !changed {
            conn.release(held.id, priority_of(table.version), 0).await?;
            for dup in duplicates {
                conn.delete(dup.id).await?;
                chunks::discard(conn, &dup.body).await;
            }
            return Ok(table);
        }
        table.version += 1;
        self.put(conn, &table).await?;
        conn.delete(held.id).await?;
        chunks::discard(conn, &stored).await;
        for dup in duplicates {
            conn.delete(dup.id).await?;
            chunks::discard(conn, &dup.body).await;
        }
        Ok(table)
    }

    async fn put(&self, conn: &mut Conn, table: &Table) -> Result<()> {
        let body = serde_json::to_vec(table).expect("the table serializes");
        let stored = chunks::store(conn, &body, self.max_job_size).await?;
        conn.use_tube(META_TUBE).await?;
        conn.put(priority_of(table.version), 0, META_TTR, &stored)
            .await?;
        Ok(())
    }

    pub(crate) async fn close(&self) {
        *self.slot.lock().await = None;
    }
}
