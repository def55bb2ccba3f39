//! Opportunistic batching: while one request for a queue is in flight,
//! further sends (or deletes) for that queue wait and then go together, up
//! to 10 per request (SQS's batch limit) and a byte budget. A lone call
//! goes out at once, alone, with no added delay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use kombu_core::{Error, ErrorKind, Result};
use tokio::sync::oneshot;

/// SQS takes at most 10 entries per batch request.
pub(crate) const MAX_BATCH: usize = 10;

type Flush<T> = dyn Fn(String, Vec<T>) -> BoxFuture<'static, Vec<Result<()>>> + Send + Sync;

struct Lane<T> {
    busy: bool,
    pending: Vec<(T, usize, oneshot::Sender<Result<()>>)>,
}

/// How many of the items (weighing `sizes`, in order) go in the next batch
/// request: at most [`MAX_BATCH`] and at most `budget` bytes together, but
/// always at least one (a lone item larger than the budget goes alone: its
/// own size was checked against the message limit before).
pub(crate) fn batch_len(sizes: impl IntoIterator<Item = usize>, budget: usize) -> usize {
    let mut take = 0;
    let mut bytes = 0usize;
    for size in sizes {
        if !fits(take, bytes, size, budget) {
            break;
        }
        take += 1;
        bytes = bytes.saturating_add(size);
    }
    take
}

/// Whether one more item of `size` joins a batch of `count` items and
/// `bytes` bytes (an empty batch takes anything).
fn fits(count: usize, bytes: usize, size: usize, budget: usize) -> bool {
    count == 0 || (count < MAX_BATCH && bytes.saturating_add(size) <= budget)
}

/// Cut `items` into batch requests, in order, by the rule of [`batch_len`].
pub(crate) fn split<T>(items: Vec<T>, size: impl Fn(&T) -> usize, budget: usize) -> Vec<Vec<T>> {
    let mut chunks: Vec<Vec<T>> = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        let weight = size(&item);
        match chunks.last_mut() {
            Some(chunk) if fits(chunk.len(), bytes, weight, budget) => {
                bytes = bytes.saturating_add(weight);
                chunk.push(item);
            }
            _ => {
                bytes = weight;
                chunks.push(vec![item]);
            }
        }
    }
    chunks
}

/// Batches items per queue URL; `flush` sends one batch and returns one
/// result per item, in order.
pub(crate) struct Batcher<T> {
    lanes: Mutex<HashMap<String, Lane<T>>>,
    flush: Box<Flush<T>>,
    byte_budget: usize,
}

impl<T: Send + 'static> Batcher<T> {
    pub(crate) fn new(
        byte_budget: usize,
        flush: impl Fn(String, Vec<T>) -> BoxFuture<'static, Vec<Result<()>>> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Batcher {
            lanes: Mutex::new(HashMap::new()),
            flush: Box::new(flush),
            byte_budget,
        })
    }

    /// Queue `item` (weighing `bytes`) for `url` and wait for its result.
    pub(crate) async fn submit(self: &Arc<Self>, url: &str, item: T, bytes: usize) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
            let lane = lanes.entry(url.to_owned()).or_insert_with(|| Lane {
                busy: false,
                pending: Vec::new(),
            });
            lane.pending.push((item, bytes, tx));
            !std::mem::replace(&mut lane.busy, true)
        };
        if start {
            // A task of its own, so a caller that gives up does not strand
            // the others' items.
            tokio::spawn(self.clone().drain(url.to_owned()));
        }
        rx.await
            .map_err(|_| Error::new(ErrorKind::ConnectionLost, "the SQS batch sender stopped"))?
    }

    async fn drain(self: Arc<Self>, url: String) {
        loop {
            let batch = {
                let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
                let Some(lane) = lanes.get_mut(&url) else {
                    return;
                };
                if lane.pending.is_empty() {
                    lanes.remove(&url);
                    return;
                }
                let take = batch_len(
                    lane.pending.iter().map(|(_, size, _)| *size),
                    self.byte_budget,
                );
                lane.pending.drain(..take).collect::<Vec<_>>()
            };
            let mut items = Vec::with_capacity(batch.len());
            let mut senders = Vec::with_capacity(batch.len());
            for (item, _, tx) in batch {
                items.push(item);
                senders.push(tx);
            }
            let count = senders.len();
            let mut results = (self.flush)(url.clone(), items).await.into_iter();
            for tx in senders {
                let result = results.next().unwrap_or_else(|| {
                    Err(Error::protocol(format!(
                        "SQS batch answered fewer than {count} entries"
                    )))
                });
                let _ = tx.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn batches_hold_ten_entries_and_the_byte_budget() {
        assert_eq!(batch_len([1; 25], 100), 10);
        assert_eq!(batch_len([60, 40, 1], 100), 2, "exactly the budget fits");
        assert_eq!(batch_len([60, 50, 10], 100), 1);
        assert_eq!(batch_len([500, 1], 100), 1, "a lone large item still goes");
        assert_eq!(batch_len(std::iter::empty(), 100), 0);

        let sizes: Vec<usize> = (0..25).collect();
        let chunks = split(sizes.clone(), |n| *n, usize::MAX);
        let lens: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(lens, [10, 10, 5]);
        assert_eq!(chunks.concat(), sizes, "every item once, in order");

        // Near the limit: 256 KiB of budget, bodies of 100 KiB and 30 KiB.
        let kib = 1024;
        let mix = vec![
            100 * kib,
            100 * kib,
            30 * kib,
            100 * kib,
            30 * kib,
            30 * kib,
            256 * kib,
            1,
        ];
        let chunks = split(mix.clone(), |n| *n, 256 * kib);
        for chunk in &chunks {
            let total: usize = chunk.iter().sum();
            assert!(chunk.len() == 1 || total <= 256 * kib, "{chunk:?}");
            assert!(chunk.len() <= MAX_BATCH);
        }
        assert_eq!(chunks.concat(), mix);
        let lens: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(lens, [3, 3, 1, 1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_items_share_requests() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let batcher = Batcher::new(100, move |_url, items: Vec<u32>| {
            seen.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                items
                    .into_iter()
                    .map(|i| {
                        if i == 13 {
                            Err(Error::protocol("13"))
                        } else {
                            Ok(())
                        }
                    })
                    .collect()
            })
        });
        let mut tasks = Vec::new();
        for i in 0..25u32 {
            let b = batcher.clone();
            tasks.push(tokio::spawn(async move { (i, b.submit("u", i, 1).await) }));
        }
        for t in tasks {
            let (i, result) = t.await.unwrap();
            assert_eq!(result.is_err(), i == 13, "item {i}");
        }
        let n = calls.load(Ordering::SeqCst);
        assert!((3..25).contains(&n), "{n} requests for 25 items");
    }
}
