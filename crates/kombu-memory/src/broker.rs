//! The in-process broker: queues ordered by priority then arrival, the
//! exchange and binding tables, and a notification for waiting consumers.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use kombu_core::spi::{Fetched, QueueBinding, StoredMessage};
use kombu_core::{Exchange, Queue};
use tokio::sync::Notify;

/// Every named broker of the process.
static BROKERS: LazyLock<Mutex<HashMap<String, Arc<MemoryBroker>>>> =
    LazyLock::new(Default::default);

/// Order within a queue: higher priority first, then first in, first out
/// within a priority (a requeued message goes to the front of its level).
/// A deque per level: taking from the front moves nothing else.
#[derive(Default)]
struct MemoryQueue {
    declaration: Option<Queue>,
    ready: BTreeMap<Reverse<u8>, VecDeque<StoredMessage>>,
    /// Delayed messages by (due time in Unix ms, arrival), with their
    /// priority: moved to `ready` once due.
    delayed: BTreeMap<(u64, u64), (StoredMessage, u8)>,
    /// Values another writer left ([`MemoryBroker::put_foreign`]), served
    /// before the messages: bytes that may not be a kombu message at all.
    foreign: VecDeque<Vec<u8>>,
}

impl MemoryQueue {
    /// Move every delayed message due at `now_ms` to the back of its level.
    fn release_due(&mut self, now_ms: u64) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let (message, priority) = entry.remove();
            self.ready
                .entry(Reverse(priority))
                .or_default()
                .push_back(message);
        }
    }

    /// When the next delayed message is due (Unix ms).
    fn next_due(&self) -> Option<u64> {
        self.delayed.keys().next().map(|(due, _)| *due)
    }

    fn len(&self) -> usize {
        self.foreign.len() + self.ready.values().map(VecDeque::len).sum::<usize>()
    }

    fn pop(&mut self) -> Option<StoredMessage> {
        self.ready.values_mut().find_map(VecDeque::pop_front)
    }
}

#[derive(Default)]
struct State {
    queues: HashMap<String, MemoryQueue>,
    /// Arrival numbers of delayed messages (keeps equal due times in order).
    delayed_seq: u64,
    exchanges: HashMap<String, Exchange>,
    bindings: HashMap<String, Vec<QueueBinding>>,
}

/// One in-process broker, shared by every connection with the same name.
pub(crate) struct MemoryBroker {
    state: Mutex<State>,
    arrived: Notify,
    /// Fetches waiting for `arrived` (a put with none skips the notify,
    /// which takes a lock).
    waiting: AtomicUsize,
}

impl MemoryBroker {
    /// The broker called `name`, created on first use.
    pub(crate) fn named(name: &str) -> Arc<MemoryBroker> {
        let mut brokers = BROKERS.lock().unwrap_or_else(|e| e.into_inner());
        brokers
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(MemoryBroker {
                    state: Mutex::new(State::default()),
                    arrived: Notify::new(),
                    waiting: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn new_queue(&self, queue: &Queue) {
        let mut state = self.lock();
        let entry = state.queues.entry(queue.name.clone()).or_default();
        entry.declaration = Some(queue.clone());
    }

    pub(crate) fn declaration(&self, queue: &str) -> Option<Queue> {
        self.lock()
            .queues
            .get(queue)
            .and_then(|q| q.declaration.clone())
    }

    pub(crate) fn has_queue(&self, queue: &str) -> bool {
        self.lock().queues.contains_key(queue)
    }

    pub(crate) fn delete_queue(&self, queue: &str) {
        let mut state = self.lock();
        state.queues.remove(queue);
        for bindings in state.bindings.values_mut() {
            bindings.retain(|b| b.queue != queue);
        }
    }

    pub(crate) fn purge(&self, queue: &str) -> u64 {
        let mut state = self.lock();
        match state.queues.get_mut(queue) {
            Some(q) => {
                let n = (q.len() + q.delayed.len()) as u64;
                q.ready.clear();
                q.delayed.clear();
                q.foreign.clear();
                n
            }
            None => 0,
        }
    }

    pub(crate) fn size(&self, queue: &str) -> u64 {
        self.lock().queues.get(queue).map_or(0, |q| q.len() as u64)
    }

    /// Store `bytes` as another writer would (served before the messages,
    /// read as an envelope when taken).
    pub(crate) fn put_foreign(&self, queue: &str, bytes: &[u8]) {
        {
            let mut state = self.lock();
            let entry = state.queues.entry(queue.to_owned()).or_default();
            entry.foreign.push_back(bytes.to_vec());
        }
        self.wake_fetches();
    }

    /// Store a message; `front` puts it before every message of its priority.
    pub(crate) fn put(&self, queue: &str, message: StoredMessage, priority: u8, front: bool) {
        {
            let mut state = self.lock();
            // Look up before `entry`, which would allocate the name each time.
            let ready = match state.queues.get_mut(queue) {
                Some(found) => &mut found.ready,
                None => &mut state.queues.entry(queue.to_owned()).or_default().ready,
            };
            let level = ready.entry(Reverse(priority)).or_default();
            if front {
                level.push_front(message);
            } else {
                level.push_back(message);
            }
        }
        self.wake_fetches();
    }

    /// Wake the fetches waiting for a message, if any. A fetch counts
    /// itself waiting before it looks at the queues (and a put stores
    /// before it reads the count), so none misses a message.
    fn wake_fetches(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.arrived.notify_waiters();
        }
    }

    /// Keep `message` until `due` (Unix ms), then put it at the back of its
    /// priority level.
    pub(crate) fn put_delayed(&self, queue: &str, message: StoredMessage, priority: u8, due: u64) {
        {
            let mut state = self.lock();
            state.delayed_seq += 1;
            let seq = state.delayed_seq;
            let entry = state.queues.entry(queue.to_owned()).or_default();
            entry.delayed.insert((due, seq), (message, priority));
        }
        // A waiting fetch looks again and waits until this one is due.
        self.wake_fetches();
    }

    /// Store messages at the back of their priority levels, under one lock.
    pub(crate) fn put_all(&self, queue: &str, messages: Vec<(StoredMessage, u8)>) {
        {
            let mut state = self.lock();
            let ready = match state.queues.get_mut(queue) {
                Some(found) => &mut found.ready,
                None => &mut state.queues.entry(queue.to_owned()).or_default().ready,
            };
            for (message, priority) in messages {
                ready
                    .entry(Reverse(priority))
                    .or_default()
                    .push_back(message);
            }
        }
        self.wake_fetches();
    }

    /// Take up to `max` messages from the first of `queues` that has any
    /// (one lock for the lot).
    /// Returns when the next delayed message of `queues` is due, if any.
    fn take(&self, queues: &[String], max: usize, out: &mut Vec<Fetched>) -> Option<u64> {
        let mut state = self.lock();
        let state = &mut *state;
        let now = now_ms();
        let mut next_due: Option<u64> = None;
        for name in queues {
            let Some(queue) = state.queues.get_mut(name) else {
                continue;
            };
            if !queue.delayed.is_empty() {
                queue.release_due(now);
                next_due = match (next_due, queue.next_due()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            out.reserve(max.min(queue.len()));
            while out.len() < max {
                let Some(raw) = queue.foreign.pop_front() else {
                    break;
                };
                out.push(Fetched::from_json(name.clone(), String::new(), &raw));
            }
            while out.len() < max {
                let Some(message) = queue.pop() else {
                    break;
                };
                // No receipt: acks are the channel's own (acks_are_local).
                out.push(Fetched::message(name.clone(), String::new(), message));
            }
            if !out.is_empty() {
                return next_due;
            }
        }
        next_due
    }

    /// Take up to `max` (at least one) messages of `queues`, waiting up to
    /// `wait` for the first.
    pub(crate) async fn fetch(
        &self,
        queues: &[String],
        wait: Duration,
        max: usize,
    ) -> Vec<Fetched> {
        let max = max.max(1);
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.take(queues, max, &mut out);
            if !out.is_empty() {
                return out;
            }
            // Nothing there: count ourselves waiting, then look again (a
            // put from now on wakes us).
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            let _waiting = Waiting::enter(&self.waiting);
            notified.as_mut().enable();
            let next_due = self.take(queues, max, &mut out);
            if !out.is_empty() {
                return out;
            }
            // Wake for the next delayed message too.
            let wake = next_due.map_or(deadline, |due| {
                let wait = Duration::from_millis(due.saturating_sub(now_ms()));
                deadline.min(tokio::time::Instant::now() + wait)
            });
            if tokio::time::timeout_at(wake, notified).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return out;
            }
        }
    }

    pub(crate) fn declare_exchange(&self, exchange: &Exchange) {
        self.lock()
            .exchanges
            .insert(exchange.name.clone(), exchange.clone());
    }

    pub(crate) fn exchange(&self, name: &str) -> Option<Exchange> {
        self.lock().exchanges.get(name).cloned()
    }

    pub(crate) fn delete_exchange(&self, name: &str) {
        let mut state = self.lock();
        state.exchanges.remove(name);
        state.bindings.remove(name);
    }

    pub(crate) fn bind(&self, exchange: &str, binding: &QueueBinding) {
        let mut state = self.lock();
        let list = state.bindings.entry(exchange.to_owned()).or_default();
        if !list.contains(binding) {
            list.push(binding.clone());
        }
    }

    pub(crate) fn unbind(&self, exchange: &str, binding: &QueueBinding) {
        if let Some(list) = self.lock().bindings.get_mut(exchange) {
            list.retain(|b| b != binding);
        }
    }

    pub(crate) fn bindings(&self, exchange: &str) -> Vec<QueueBinding> {
        self.lock()
            .bindings
            .get(exchange)
            .cloned()
            .unwrap_or_default()
    }
}

/// Now, in Unix milliseconds.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fetch counted as waiting for as long as this lives (also when the
/// fetch is dropped midway).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
