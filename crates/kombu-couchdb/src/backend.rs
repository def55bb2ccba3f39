//! The [`VirtualBackend`] over a CouchDB database: messages are documents
//! claimed with a lease (an update with owner and deadline that only one
//! writer wins), acked by deleting them with their revision, and waited for
//! on the changes feed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kombu_core::spi::{
    async_trait, Fetched, FetchedBody, QueueBinding, Receipt, StoredMessage, VirtualBackend,
};
use kombu_core::{Capabilities, Envelope, Error, ErrorKind, Exchange, Queue, Result};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::bulk::{self, Outcome};
use crate::changes::ChangesFeed;
use crate::client::{status_error, CouchClient};
use crate::config::CouchConfig;
use crate::layout::{self, Lease, SequenceGenerator};

/// Rows read per page when counting, purging or deleting a queue, and the
/// largest page a claim reads.
const PAGE: usize = 1000;
/// Pause after a changes feed answer that concerned other queues.
const IRRELEVANT_CHANGES_PAUSE: Duration = Duration::from_millis(50);
/// Attempts at a read-modify-write that keeps losing to other writers.
const WRITE_ATTEMPTS: usize = 8;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The [`VirtualBackend`] of `couchdb://`. A connection hands it out as
/// `conn.extension::<CouchBackend>().await?`.
pub struct CouchBackend {
    client: CouchClient,
    owner: String,
    /// The number of this backend's last claim (see [`layout::lease`]).
    leases: AtomicU64,
    /// Messages this backend is writing a lease on right now: its other
    /// consumers pass them by instead of losing the race with a `409`.
    claiming: Mutex<HashSet<String>>,
    seqs: SequenceGenerator,
    feed: ChangesFeed,
    polling_interval: Duration,
    visibility_timeout: Duration,
    request_timeout: Duration,
    claim_batch: usize,
}

impl CouchBackend {
    /// Check the server answers (`GET /`, within `request_timeout`).
    pub async fn ping(&self) -> Result<()> {
        self.client.ping().await
    }

    pub(crate) fn new(client: CouchClient, config: &CouchConfig) -> Self {
        let instance = uuid::Uuid::new_v4().simple().to_string();
        CouchBackend {
            client,
            owner: format!("{}-{}", std::process::id(), &instance[..12]),
            leases: AtomicU64::new(0),
            claiming: Mutex::default(),
            seqs: SequenceGenerator::new(),
            feed: ChangesFeed::default(),
            polling_interval: config.polling_interval,
            visibility_timeout: config.visibility_timeout,
            request_timeout: config.request_timeout,
            claim_batch: config.claim_batch,
        }
    }

    /// The database this backend uses.
    pub fn database(&self) -> &str {
        self.client.database()
    }

    /// Note the changes feed's current position (consumers wait from it).
    pub(crate) async fn read_feed_position(&self) -> Result<()> {
        let position = self.feed.position(&self.client).await?;
        self.feed.remember(position);
        Ok(())
    }

    /// The lease owner this backend writes into the messages it claims.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Ready messages of `queue` at `now`, most urgent then oldest first:
    /// the ready ones of the first page of its id range that has any (at
    /// most `claim_batch` of them). Messages leased by others are skipped
    /// page by page, each page twice the size of the one before (up to
    /// [`PAGE`]), so a queue whose head is leased costs a few requests, not
    /// one per leased message. With none ready, also when the first
    /// delayed message of the queue is due (Unix ms), if it has any.
    async fn candidates(&self, queue: &str, now: u64) -> Result<(Vec<Value>, Option<u64>)> {
        let mut cursor = Cursor::messages(queue);
        let mut limit = self.claim_batch;
        let mut next_due: Option<u64> = None;
        while let Some(rows) = self.next_page(&mut cursor, limit, true).await? {
            let mut ready = Vec::new();
            for doc in rows.into_iter().filter_map(|row| row.doc) {
                if layout::is_ready(&doc, now) {
                    if ready.len() < self.claim_batch {
                        ready.push(doc);
                    }
                } else if let Some(due) = layout::due_of(&doc, now) {
                    next_due = Some(next_due.map_or(due, |d| d.min(due)));
                }
            }
            if !ready.is_empty() {
                return Ok((ready, None));
            }
            limit = (limit * 2).min(PAGE);
        }
        Ok((Vec::new(), next_due))
    }

    /// The next page of `cursor`'s id range: at most `limit` rows (with
    /// their documents when `docs`), `None` once the range is read. A
    /// page starts at the last id of the page before (`startkey` is
    /// inclusive) and leaves that row out: a document deleted in between
    /// moves nothing.
    async fn next_page(
        &self,
        cursor: &mut Cursor,
        limit: usize,
        docs: bool,
    ) -> Result<Option<Vec<Row>>> {
        if cursor.done {
            return Ok(None);
        }
        let start = cursor.after.as_deref().unwrap_or(&cursor.start);
        let asked = limit + usize::from(cursor.after.is_some());
        let mut rows = self.all_docs(start, &cursor.end, Some(asked), docs).await?;
        cursor.done = rows.len() < asked;
        if let (Some(after), Some(first)) = (&cursor.after, rows.first()) {
            if &first.id == after {
                rows.remove(0);
            }
        }
        match rows.last() {
            Some(last) => cursor.after = Some(last.id.clone()),
            None => cursor.done = true,
        }
        Ok(Some(rows))
    }

    /// `_all_docs` from `start` to `end` (both inclusive), at most `limit`
    /// rows, with the documents when `docs`.
    async fn all_docs(
        &self,
        start: &str,
        end: &str,
        limit: Option<usize>,
        docs: bool,
    ) -> Result<Vec<Row>> {
        let mut query = vec![
            ("startkey", Value::from(start).to_string()),
            ("endkey", Value::from(end).to_string()),
        ];
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        if docs {
            query.push(("include_docs", "true".to_owned()));
        }
        let mut body = self
            .client
            .send(Method::GET, &["_all_docs"], &query, None, None)
            .await?
            .ok("read documents")?;
        let rows = match body.get_mut("rows").map(Value::take) {
            Some(Value::Array(rows)) => rows,
            _ => Vec::new(),
        };
        Ok(rows.into_iter().filter_map(Row::from_json).collect())
    }

    /// Lease the oldest ready message of `queue`, if there is one; if
    /// not, when its first delayed message is due (Unix ms), if any.
    async fn claim(&self, queue: &str) -> Result<(Option<Fetched>, Option<u64>)> {
        for _round in 0..WRITE_ATTEMPTS {
            let now = now_ms();
            let (candidates, next_due) = self.candidates(queue, now).await?;
            if candidates.is_empty() {
                return Ok((None, next_due));
            }
            let until = now + self.visibility_timeout.as_millis() as u64;
            for mut doc in candidates {
                let Some(id) = doc.get("_id").and_then(Value::as_str).map(str::to_owned) else {
                    continue;
                };
                let Some(_claiming) = Claiming::start(&self.claiming, &id) else {
                    // Another consumer of this connection is on it.
                    continue;
                };
                let lease_id = self.leases.fetch_add(1, Ordering::Relaxed) + 1;
                layout::lease(&mut doc, &self.owner, lease_id, now, until);
                let reply = self
                    .client
                    .send(Method::PUT, &[&id], &[], Some(&doc), None)
                    .await?;
                match reply.status.as_u16() {
                    201 | 202 => {
                        let rev = reply.body.get("rev").and_then(Value::as_str).unwrap_or("");
                        let lease = Lease::of(&doc, rev).ok_or_else(|| {
                            Error::protocol("couchdb: a claimed message has no id")
                        })?;
                        let raw = layout::payload_bytes(&doc).unwrap_or_default();
                        // Its earlier leases are its returns (requeued, or
                        // the lease ran out): `deliveries` counts them all.
                        let mut fetched = Fetched::from_json(queue, lease.to_receipt(), &raw)
                            .with_returned(lease.deliveries.saturating_sub(1));
                        if lease.deliveries > 1 {
                            // Leased before by a consumer that never
                            // acked nor released it (it died).
                            if let FetchedBody::Envelope(envelope) = &mut fetched.body {
                                envelope.mark_redelivered();
                            }
                        }
                        return Ok((Some(fetched), None));
                    }
                    // Another consumer won this one (or it is gone): next.
                    404 | 409 => continue,
                    _ => return Err(reply.ok("lease a message").unwrap_err()),
                }
            }
            // Every candidate went to someone else: look again.
        }
        Ok((None, None))
    }

    /// Lease a message of the first of `queues` that has one ready; if
    /// none has, when the first delayed message of any is due (Unix ms).
    async fn claim_any(&self, queues: &[String]) -> Result<(Option<Fetched>, Option<u64>)> {
        let mut next_due: Option<u64> = None;
        for queue in queues {
            match self.claim(queue).await? {
                (Some(found), _) => return Ok((Some(found), None)),
                (None, Some(due)) => next_due = Some(next_due.map_or(due, |d| d.min(due))),
                (None, None) => {}
            }
        }
        Ok((None, next_due))
    }

    /// A document by id (`None` when missing or deleted).
    async fn get_doc(&self, id: &str) -> Result<Option<Value>> {
        let reply = self
            .client
            .send(Method::GET, &[id], &[], None, None)
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        reply.ok("read a document").map(Some)
    }

    /// Store `doc` (a declaration) unless an equal one is there.
    async fn upsert(&self, mut doc: Value, ignore: &[&str]) -> Result<()> {
        let id = doc["_id"].as_str().unwrap_or_default().to_owned();
        for _ in 0..WRITE_ATTEMPTS {
            if let Some(existing) = self.get_doc(&id).await? {
                if same_content(&existing, &doc, ignore) {
                    return Ok(());
                }
                doc["_rev"] = existing["_rev"].clone();
            }
            let reply = self
                .client
                .send(Method::PUT, &[&id], &[], Some(&doc), None)
                .await?;
            if reply.status != StatusCode::CONFLICT {
                return reply.ok("store a declaration").map(|_| ());
            }
        }
        Err(Error::new(
            ErrorKind::PreconditionFailed,
            "couchdb: a declaration kept changing under us",
        ))
    }

    /// Delete a document whatever its revision (`false` when missing).
    async fn delete_doc(&self, id: &str) -> Result<bool> {
        for _ in 0..WRITE_ATTEMPTS {
            let Some(existing) = self.get_doc(id).await? else {
                return Ok(false);
            };
            let rev = existing["_rev"].as_str().unwrap_or_default().to_owned();
            let reply = self
                .client
                .send(Method::DELETE, &[id], &[("rev", rev)], None, None)
                .await?;
            match reply.status.as_u16() {
                200 | 202 => return Ok(true),
                404 => return Ok(false),
                409 => continue,
                _ => return Err(reply.ok("delete a document").unwrap_err()),
            }
        }
        Err(Error::new(
            ErrorKind::PreconditionFailed,
            "couchdb: a document kept changing while being deleted",
        ))
    }

    /// Delete documents at their revisions; returns how many went.
    async fn bulk_delete<'a>(
        &self,
        docs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<u64> {
        let deletions: Vec<Value> = docs
            .into_iter()
            .map(|(id, rev)| json!({"_id": id, "_rev": rev, "_deleted": true}))
            .collect();
        if deletions.is_empty() {
            return Ok(0);
        }
        let outcomes = bulk::write(&self.client, deletions, "delete messages").await?;
        Ok(outcomes.iter().filter(|o| **o == Outcome::Stored).count() as u64)
    }

    /// The message document of `lease` if this claim still holds it (its
    /// owner is this backend and its `deliveries` this claim's), at its
    /// current revision: an extended lease has a newer one than the
    /// receipt's. `None` when another claim has it, or it is gone.
    async fn still_ours(&self, lease: &Lease) -> Result<Option<Value>> {
        let Some(doc) = self.get_doc(&lease.id).await? else {
            return Ok(None);
        };
        let owner = doc.get("lease_owner").and_then(Value::as_str);
        let deliveries = doc.get("deliveries").and_then(Value::as_u64);
        Ok(
            (owner == Some(self.owner.as_str()) && deliveries == Some(lease.deliveries))
                .then_some(doc),
        )
    }

    /// Delete `lease`'s message at its current revision after a `409` on
    /// the receipt's (its lease was extended since); a late ack if the
    /// message is not ours any more.
    async fn ack_at_current_rev(&self, queue: &str, lease: &Lease) -> Result<()> {
        let rev = self
            .still_ours(lease)
            .await?
            .and_then(|doc| doc.get("_rev").and_then(Value::as_str).map(str::to_owned));
        let Some(rev) = rev else {
            late_ack(queue, &lease.id);
            return Ok(());
        };
        let reply = self
            .client
            .send(Method::DELETE, &[&lease.id], &[("rev", rev)], None, None)
            .await?;
        match reply.status.as_u16() {
            200 | 202 | 404 => Ok(()),
            409 => {
                late_ack(queue, &lease.id);
                Ok(())
            }
            _ => Err(status_error(reply.status, &reply.body, "ack a message")),
        }
    }

    /// Delete the leased messages of `leases` in one request each
    /// [`bulk::MAX_DOCS`] (acks); the first failure. A message whose lease
    /// ran out and that another consumer claimed since (a `conflict`) is
    /// logged and counts as acked, as in [`VirtualBackend::ack`].
    async fn delete_leased(&self, leases: Vec<(&str, Lease)>) -> Result<()> {
        for batch in bulk::batches(leases, |_| 0) {
            let docs = batch
                .iter()
                .map(|(_, lease)| json!({"_id": lease.id, "_rev": lease.rev, "_deleted": true}))
                .collect();
            let outcomes = bulk::write(&self.client, docs, "ack messages").await?;
            let mut refusals = Vec::new();
            let mut conflicts = Vec::new();
            for ((queue, lease), outcome) in batch.iter().zip(&outcomes) {
                match outcome {
                    Outcome::Stored => {}
                    Outcome::Refused { error, .. } if error == "not_found" => {}
                    Outcome::Refused { error, .. } if error == "conflict" => {
                        conflicts.push((*queue, lease))
                    }
                    Outcome::Refused { error, reason } => {
                        refusals.push((error.as_str(), reason.as_str()))
                    }
                }
            }
            if !refusals.is_empty() {
                return Err(bulk::refused("ack messages", &refusals, batch.len()));
            }
            // Extended since (a newer revision), or lost: one at a time.
            for (queue, lease) in conflicts {
                self.ack_at_current_rev(queue, lease).await?;
            }
        }
        Ok(())
    }

    /// Delete the messages of `queue` (only the ready and the delayed ones
    /// when `ready_only`: not those leased by consumers) at the revisions
    /// read, page by page; returns how many went. A message claimed in
    /// between keeps its new revision and stays.
    async fn delete_messages(&self, queue: &str, ready_only: bool) -> Result<u64> {
        let mut cursor = Cursor::messages(queue);
        let mut total = 0;
        let now = now_ms();
        while let Some(rows) = self.next_page(&mut cursor, PAGE, ready_only).await? {
            let doomed = rows
                .iter()
                .filter(|row| {
                    !ready_only
                        || row.doc.as_ref().is_some_and(|d| {
                            layout::is_ready(d, now) || layout::due_of(d, now).is_some()
                        })
                })
                .map(|row| (row.id.as_str(), row.rev.as_str()));
            total += self.bulk_delete(doomed).await?;
        }
        Ok(total)
    }

    /// Every binding document (of one exchange, or all).
    async fn binding_docs(&self, exchange: Option<&str>) -> Result<Vec<Value>> {
        let (start, end) = layout::binding_range(exchange);
        Ok(self
            .all_docs(&start, &end, None, true)
            .await?
            .into_iter()
            .filter_map(|row| row.doc)
            .collect())
    }
}

/// A message id in [`CouchBackend::claiming`], taken out when dropped.
struct Claiming<'a> {
    set: &'a Mutex<HashSet<String>>,
    id: String,
}

impl<'a> Claiming<'a> {
    /// Note that `id` is being claimed; `None` if it already is.
    fn start(set: &'a Mutex<HashSet<String>>, id: &str) -> Option<Claiming<'a>> {
        let mut ids = set.lock().unwrap_or_else(|e| e.into_inner());
        ids.insert(id.to_owned()).then(|| Claiming {
            set,
            id: id.to_owned(),
        })
    }
}

impl Drop for Claiming<'_> {
    fn drop(&mut self) {
        let mut ids = self.set.lock().unwrap_or_else(|e| e.into_inner());
        ids.remove(&self.id);
    }
}

/// A walk through a document id range, page by page
/// ([`CouchBackend::next_page`]).
struct Cursor {
    start: String,
    end: String,
    /// The last id read.
    after: Option<String>,
    done: bool,
}

impl Cursor {
    /// The id range of `queue`'s messages.
    fn messages(queue: &str) -> Cursor {
        let (start, end) = layout::message_range(queue);
        Cursor {
            start,
            end,
            after: None,
            done: false,
        }
    }
}

/// A row of `_all_docs`.
struct Row {
    id: String,
    rev: String,
    /// The document, when asked for (`include_docs`).
    doc: Option<Value>,
}

impl Row {
    fn from_json(mut row: Value) -> Option<Row> {
        let id = row.get("id")?.as_str()?.to_owned();
        let rev = row.get("value")?.get("rev")?.as_str()?.to_owned();
        let doc = row.get_mut("doc").map(Value::take).filter(Value::is_object);
        Some(Row { id, rev, doc })
    }
}

/// Log an ack that came after the message's lease ran out.
fn late_ack(queue: &str, id: &str) {
    tracing::warn!(
        queue,
        id,
        "couchdb: ack after the lease ran out: another consumer has the message \
         and it will be delivered again (raise visibility_timeout)"
    );
}

/// A document's `_id` and `_rev`.
fn id_and_rev(doc: &Value) -> Option<(&str, &str)> {
    Some((doc.get("_id")?.as_str()?, doc.get("_rev")?.as_str()?))
}

/// True when `a` and `b` are equal but for `_id`, `_rev` and `ignore`.
fn same_content(a: &Value, b: &Value, ignore: &[&str]) -> bool {
    let strip = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Value::Object(map) = &mut v {
            map.remove("_id");
            map.remove("_rev");
            for key in ignore {
                map.remove(*key);
            }
        }
        v
    };
    strip(a) == strip(b)
}

pub(crate) fn capabilities() -> Capabilities {
    Capabilities::new(kombu_core::TransportKind::Virtual)
        .with_fanout_note("bindings in the database")
        .with_shared_declarations(true)
        .with_persistent(true)
        .with_redelivers_unacked(true)
        .with_delayed_delivery(true)
        .with_lease_extension(true)
        .with_delivery_limit(true)
}

#[async_trait]
impl VirtualBackend for CouchBackend {
    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn new_queue(&self, queue: &Queue) -> Result<()> {
        self.upsert(layout::queue_doc(queue, now_ms()), &["declared_at"])
            .await
    }

    async fn queue_declaration(&self, queue: &str) -> Result<Option<Queue>> {
        Ok(self
            .get_doc(&layout::queue_doc_id(queue))
            .await?
            .and_then(|doc| layout::queue_from_doc(&doc)))
    }

    async fn has_queue(&self, queue: &str) -> Result<bool> {
        if self.get_doc(&layout::queue_doc_id(queue)).await?.is_some() {
            return Ok(true);
        }
        let rows = self
            .next_page(&mut Cursor::messages(queue), 1, false)
            .await?;
        Ok(rows.is_some_and(|rows| !rows.is_empty()))
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        self.delete_messages(queue, false).await?;
        self.delete_doc(&layout::queue_doc_id(queue)).await?;
        let bindings = self.binding_docs(None).await?;
        let theirs = bindings
            .iter()
            .filter(|doc| doc.get("queue").and_then(Value::as_str) == Some(queue))
            .filter_map(id_and_rev);
        self.bulk_delete(theirs).await?;
        Ok(())
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        self.delete_messages(queue, true).await
    }

    async fn size(&self, queue: &str) -> Result<u64> {
        let mut cursor = Cursor::messages(queue);
        let now = now_ms();
        let mut ready = 0;
        while let Some(rows) = self.next_page(&mut cursor, PAGE, true).await? {
            ready += rows
                .iter()
                .filter_map(|row| row.doc.as_ref())
                .filter(|doc| layout::is_ready(doc, now))
                .count() as u64;
        }
        Ok(ready)
    }

    async fn put(&self, queue: &str, envelope: &Envelope, priority: u8) -> Result<()> {
        let now = now_ms();
        let seq = self.seqs.next(now);
        let doc = layout::message_doc(queue, &seq, envelope, priority, now);
        let id = layout::message_id(queue, priority, &seq);
        self.client
            .send(Method::PUT, &[&id], &[], Some(&doc), None)
            .await?
            .ok("store a message")?;
        Ok(())
    }

    /// One `PUT` of a message document that no claim takes before
    /// `not_before_ms` ([`layout::delayed_message_doc`]): in its queue's
    /// id range, placed by its due time. A consumer waiting on the changes
    /// feed sees it stored, finds it not ready, and looks again when it is
    /// due.
    async fn put_delayed(
        &self,
        queue: &str,
        message: StoredMessage,
        priority: u8,
        not_before_ms: u64,
    ) -> Result<()> {
        let now = now_ms();
        let seq = self.seqs.next(now);
        let envelope = message.into_envelope();
        let doc = layout::delayed_message_doc(queue, &seq, &envelope, priority, now, not_before_ms);
        let id = doc["_id"].as_str().unwrap_or_default().to_owned();
        self.client
            .send(Method::PUT, &[&id], &[], Some(&doc), None)
            .await?
            .ok("store a delayed message")?;
        Ok(())
    }

    /// The same documents as [`put`](Self::put), written with
    /// `POST /{db}/_bulk_docs`, 256 documents (or 4 MiB of payload) a
    /// request, one request after another. Their sequences follow the
    /// order of `messages`, so they are delivered in that order (within a
    /// priority). Any document refused is an error (the others of its
    /// request stay written); no request follows a failed one.
    async fn put_many(&self, queue: &str, messages: Vec<(Envelope, u8)>) -> Result<()> {
        let now = now_ms();
        let docs = messages
            .iter()
            .map(|(envelope, priority)| {
                let seq = self.seqs.next(now);
                layout::message_doc(queue, &seq, envelope, *priority, now)
            })
            .collect();
        drop(messages);
        let payload_bytes = |doc: &Value| doc["payload"].as_str().map_or(0, str::len);
        for batch in bulk::batches(docs, payload_bytes) {
            let count = batch.len();
            let outcomes = bulk::write(&self.client, batch, "store messages").await?;
            let refusals: Vec<(&str, &str)> = outcomes
                .iter()
                .filter_map(|outcome| match outcome {
                    Outcome::Stored => None,
                    Outcome::Refused { error, reason } => Some((error.as_str(), reason.as_str())),
                })
                .collect();
            if !refusals.is_empty() {
                return Err(bulk::refused("store messages", &refusals, count));
            }
        }
        Ok(())
    }

    async fn fetch(&self, queues: &[String], wait: Duration) -> Result<Option<Fetched>> {
        if wait.is_zero() {
            return Ok(self.claim_any(queues).await?.0);
        }
        let deadline = tokio::time::Instant::now() + wait;
        // Read the position first: whatever is stored after it wakes us.
        let mut since = self.feed.position(&self.client).await?;
        loop {
            let (found, next_due) = self.claim_any(queues).await?;
            if let Some(found) = found {
                self.feed.remember(since);
                return Ok(Some(found));
            }
            // A delayed message becomes ready without a change: look again
            // when the first one is due (a millisecond after).
            let wake_at = next_due.map_or(deadline, |due| {
                let left = Duration::from_millis(due.saturating_sub(now_ms()) + 1);
                deadline.min(tokio::time::Instant::now() + left)
            });
            loop {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    self.feed.remember(since);
                    return Ok(None);
                }
                let remaining = wake_at.saturating_duration_since(now);
                if remaining.is_zero() {
                    break;
                }
                let (next, relevant) = self
                    .feed
                    .wait(&self.client, &since, queues, remaining)
                    .await?;
                let moved = next != since;
                since = next;
                if relevant {
                    break;
                }
                if moved {
                    // Other queues' traffic: let it gather for a moment
                    // rather than ask again after every write (each
                    // waiting consumer answers each change otherwise).
                    let pause = remaining.min(IRRELEVANT_CHANGES_PAUSE);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    async fn ack(&self, queue: &str, receipt: &Receipt) -> Result<()> {
        let lease = Lease::from_receipt(receipt)
            .ok_or_else(|| Error::protocol(format!("couchdb: bad receipt {receipt:?}")))?;
        let reply = self
            .client
            .send(
                Method::DELETE,
                &[&lease.id],
                &[("rev", lease.rev.clone())],
                None,
                None,
            )
            .await?;
        match reply.status.as_u16() {
            200 | 202 | 404 => Ok(()),
            409 => self.ack_at_current_rev(queue, &lease).await,
            _ => Err(status_error(reply.status, &reply.body, "ack a message")),
        }
    }

    /// Every lease deleted at its revision with `_bulk_docs` (one request
    /// per 256), with the outcomes of [`ack`](Self::ack)
    /// for each. A receipt that cannot be read is an error; the others are
    /// still sent.
    async fn ack_many(&self, acks: &[(String, Receipt)]) -> Result<()> {
        let mut bad = None;
        let mut ids = HashSet::with_capacity(acks.len());
        let mut leases = Vec::with_capacity(acks.len());
        for (queue, receipt) in acks {
            match Lease::from_receipt(receipt) {
                Some(lease) => {
                    if ids.insert(lease.id.clone()) {
                        leases.push((queue.as_str(), lease));
                    }
                }
                None => {
                    bad.get_or_insert_with(|| {
                        Error::protocol(format!("couchdb: bad receipt {receipt:?}"))
                    });
                }
            }
        }
        self.delete_leased(leases).await?;
        bad.map_or(Ok(()), Err)
    }

    /// Reads the message (`GET`), checks this claim still holds it (its
    /// `lease_owner` and `deliveries`), and writes it back with
    /// `lease_until` = now + `by` at its revision. A message another
    /// claim holds, or one that is gone (acked, purged), is a
    /// `PreconditionFailed` error. Ack and requeue then find the newer
    /// revision the same way after a `409` on the receipt's.
    async fn extend_lease(&self, queue: &str, receipt: &Receipt, by: Duration) -> Result<()> {
        let lease = Lease::from_receipt(receipt)
            .ok_or_else(|| Error::protocol(format!("couchdb: bad receipt {receipt:?}")))?;
        let lost = || {
            Error::new(
                ErrorKind::PreconditionFailed,
                format!(
                    "couchdb: the lease on a message of {queue:?} had already ended (it ran \
                     out and another consumer claimed it, or it was acked): it may be \
                     delivered again"
                ),
            )
        };
        for _ in 0..WRITE_ATTEMPTS {
            let Some(mut doc) = self.still_ours(&lease).await? else {
                return Err(lost());
            };
            let until = now_ms().saturating_add(u64::try_from(by.as_millis()).unwrap_or(u64::MAX));
            doc["lease_until"] = until.into();
            let reply = self
                .client
                .send(Method::PUT, &[&lease.id], &[], Some(&doc), None)
                .await?;
            match reply.status.as_u16() {
                201 | 202 => return Ok(()),
                404 => return Err(lost()),
                // Written in between (another extension): read again.
                409 => continue,
                _ => return Err(status_error(reply.status, &reply.body, "extend a lease")),
            }
        }
        Err(lost())
    }

    /// `visibility_timeout`: how long a lease lasts.
    fn lease_duration(&self) -> Option<Duration> {
        Some(self.visibility_timeout)
    }

    async fn requeue(&self, queue: &str, receipt: &Receipt, envelope: &Envelope) -> Result<()> {
        let lease = Lease::from_receipt(receipt)
            .ok_or_else(|| Error::protocol(format!("couchdb: bad receipt {receipt:?}")))?;
        let mut doc = lease.released_doc(queue, envelope);
        let mut reply = self
            .client
            .send(Method::PUT, &[&lease.id], &[], Some(&doc), None)
            .await?;
        if reply.status == StatusCode::CONFLICT {
            // Its lease was extended since (a newer revision), if still ours.
            if let Some(current) = self.still_ours(&lease).await? {
                doc["_rev"] = current["_rev"].clone();
                reply = self
                    .client
                    .send(Method::PUT, &[&lease.id], &[], Some(&doc), None)
                    .await?;
            }
        }
        match reply.status.as_u16() {
            201 | 202 => Ok(()),
            404 | 409 => {
                tracing::warn!(
                    queue,
                    id = %lease.id,
                    "couchdb: requeue after the lease ran out: the message is already back \
                     (or was purged)"
                );
                Ok(())
            }
            _ => Err(status_error(reply.status, &reply.body, "requeue a message")),
        }
    }

    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        self.upsert(layout::exchange_doc(exchange), &[]).await
    }

    async fn exchange(&self, name: &str) -> Result<Option<Exchange>> {
        Ok(self
            .get_doc(&layout::exchange_doc_id(name))
            .await?
            .and_then(|doc| layout::exchange_from_doc(&doc)))
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        let bindings = self.binding_docs(Some(name)).await?;
        self.bulk_delete(bindings.iter().filter_map(id_and_rev))
            .await?;
        self.delete_doc(&layout::exchange_doc_id(name)).await?;
        Ok(())
    }

    async fn bind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        let doc = layout::binding_doc(exchange, binding);
        let id = layout::binding_doc_id(exchange, binding);
        let reply = self
            .client
            .send(Method::PUT, &[&id], &[], Some(&doc), None)
            .await?;
        match reply.status.as_u16() {
            // 409: the same binding is there already.
            201 | 202 | 409 => Ok(()),
            _ => Err(status_error(reply.status, &reply.body, "store a binding")),
        }
    }

    async fn unbind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        self.delete_doc(&layout::binding_doc_id(exchange, binding))
            .await?;
        Ok(())
    }

    async fn bindings(&self, exchange: &str) -> Result<Vec<QueueBinding>> {
        Ok(self
            .binding_docs(Some(exchange))
            .await?
            .iter()
            .filter_map(layout::binding_from_doc)
            .map(|(_, binding)| binding)
            .collect())
    }

    fn polling_interval(&self) -> Duration {
        self.polling_interval
    }

    /// Requests answer within `request_timeout` (the HTTP client's own
    /// bound); the core's bound on one call is the same.
    fn operation_timeout(&self) -> Option<Duration> {
        Some(self.request_timeout)
    }

    async fn ping(&self) -> Result<()> {
        // Any failed heartbeat counts as a lost connection.
        CouchBackend::ping(self).await.map_err(|err| {
            if err.is_connection_error() {
                err
            } else {
                Error::new(
                    ErrorKind::ConnectionLost,
                    format!("couchdb heartbeat failed: {err}"),
                )
            }
        })
    }
}
