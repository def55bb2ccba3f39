//! Batches: a publish of many messages and coalesced acks, each a few
//! pipelined exchanges ([`Conn::put_pipelined`],
//! [`Conn::delete_pipelined`]) instead of a round trip per message.
//!
//! - **Puts** go through one pooled connection: `use` the tube when the
//!   connection uses another one (its own round trip, so that a `use` the
//!   server refused can never send the puts to the wrong tube), then the
//!   `put`s of up to [`MAX_PIPELINE_JOBS`] messages (or
//!   [`MAX_PIPELINE_BYTES`]) written at once and their answers read in
//!   order. A message that needs chunks (larger than the server's
//!   `max-job-size`) is put alone, in its turn, so the jobs keep the order
//!   of the batch. Any answer other than `INSERTED` fails the batch;
//!   what was stored stays (a publish is at least once).
//! - **Acks**: a reserved job can only be deleted by the connection that
//!   reserved it, so the jobs are grouped by reserving connection and each
//!   group is one pipelined exchange on it (one wake of its reserve, not
//!   one per job); the groups run concurrently.

use std::sync::Arc;

use futures::future::join_all;
use kombu_core::spi::Receipt;
use kombu_core::{Envelope, Error, Result};

use super::{receipt_id, BeanstalkBackend, JOB_ID_HEADER};
use crate::chunks;
use crate::protocol::PutJob;
use crate::reserver::Reserver;

/// Most commands written before their answers are read. The answers of a
/// pipeline wait in the socket buffers until read: a few hundred answers
/// of a few bytes each fit with room to spare.
pub(crate) const MAX_PIPELINE_JOBS: usize = 256;

/// Most job bytes written before the answers are read (one job larger than
/// this goes alone), so each write stays well within the I/O timeout.
pub(crate) const MAX_PIPELINE_BYTES: usize = 1 << 20;

/// A message ready to put: its beanstalk priority, delay, ttr and body.
struct Prepared {
    pri: u32,
    delay: u32,
    ttr: u32,
    body: Vec<u8>,
}

impl Prepared {
    fn job(&self) -> PutJob<'_> {
        PutJob {
            pri: self.pri,
            delay: self.delay,
            ttr: self.ttr,
            body: &self.body,
        }
    }
}

/// How many of the first `jobs` go into one pipeline: the jobs that need
/// no chunks, at most [`MAX_PIPELINE_JOBS`] and [`MAX_PIPELINE_BYTES`]
/// (at least one). 0 when the first one needs chunks.
fn pipeline_len(bodies: &[&[u8]], max_job_size: usize) -> usize {
    let mut bytes = 0;
    let mut count = 0;
    for body in bodies.iter().take(MAX_PIPELINE_JOBS) {
        if chunks::needs_chunks(body, max_job_size)
            || (count > 0 && bytes + body.len() > MAX_PIPELINE_BYTES)
        {
            break;
        }
        bytes += body.len();
        count += 1;
    }
    count
}

/// The jobs of one reserving connection (one of its connections: the
/// `generation`) to delete.
struct Settle {
    reserver: Arc<Reserver>,
    generation: u64,
    /// (job id, chunk ids) of each.
    jobs: Vec<(u64, Vec<u64>)>,
}

impl BeanstalkBackend {
    /// The message as it is put: priority, delay, ttr and the envelope
    /// without the [`JOB_ID_HEADER`] of an earlier delivery.
    fn prepare(&self, mut envelope: Envelope, priority: u8) -> Prepared {
        let (pri, delay, ttr) = self.job_params(&envelope, priority);
        envelope.headers.shift_remove(JOB_ID_HEADER);
        Prepared {
            pri,
            delay,
            ttr,
            body: envelope.to_json(),
        }
    }

    /// Put `messages` into `queue`, in order (see the module docs).
    pub(super) async fn put_batch(&self, queue: &str, messages: Vec<(Envelope, u8)>) -> Result<()> {
        let jobs: Vec<Prepared> = messages
            .into_iter()
            .map(|(envelope, priority)| self.prepare(envelope, priority))
            .collect();
        let bodies: Vec<&[u8]> = jobs.iter().map(|job| job.body.as_slice()).collect();
        let mut taken = self.pool.get().await?;
        let conn = taken.conn();
        let mut next = 0;
        while next < jobs.len() {
            let count = pipeline_len(&bodies[next..], self.max_job_size);
            if count == 0 {
                self.put_one(conn, queue, jobs[next].job()).await?;
                next += 1;
                continue;
            }
            let pipeline: Vec<PutJob<'_>> =
                jobs[next..next + count].iter().map(Prepared::job).collect();
            conn.use_tube(queue).await?;
            let answers = conn.put_pipelined(&pipeline).await?;
            let refused: Vec<Error> = answers.into_iter().filter_map(Result::err).collect();
            if let Some(first) = refused.first() {
                let stored = count - refused.len();
                return Err(Error::new(
                    first.kind(),
                    format!(
                        "{} of {count} jobs put together were not stored ({stored} were): {}",
                        refused.len(),
                        first.message()
                    ),
                ));
            }
            next += count;
        }
        Ok(())
    }

    /// Delete the jobs of `acks` (see the module docs); every one is
    /// tried, the first error is returned.
    pub(super) async fn ack_batch(&self, acks: &[(String, Receipt)]) -> Result<()> {
        let mut first_error = None;
        let mut groups: Vec<Settle> = Vec::new();
        for (_, receipt) in acks {
            let held = receipt_id(receipt).and_then(|id| Ok((id, self.take_held(id, "delete")?)));
            let (id, held) = match held {
                Ok(found) => found,
                Err(err) => {
                    first_error.get_or_insert(err);
                    continue;
                }
            };
            let group = groups.iter_mut().find(|group| {
                Arc::ptr_eq(&group.reserver, &held.reserver) && group.generation == held.generation
            });
            match group {
                Some(group) => group.jobs.push((id, held.chunks)),
                None => groups.push(Settle {
                    reserver: held.reserver,
                    generation: held.generation,
                    jobs: vec![(id, held.chunks)],
                }),
            }
        }
        let deletes = groups.iter().map(|group| {
            let ids: Vec<u64> = group.jobs.iter().map(|(id, _)| *id).collect();
            async move {
                group
                    .reserver
                    .delete_many(group.generation, &ids, MAX_PIPELINE_JOBS)
                    .await
            }
        });
        let deleted = join_all(deletes).await;
        let mut chunk_ids = Vec::new();
        for (group, outcome) in groups.iter().zip(deleted) {
            match outcome {
                Ok(deleted) => {
                    for ((id, chunks), deleted) in group.jobs.iter().zip(deleted) {
                        if deleted {
                            chunk_ids.extend_from_slice(chunks);
                        } else {
                            first_error.get_or_insert(Reserver::gone(*id, "delete"));
                        }
                    }
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        if !chunk_ids.is_empty() {
            // Best effort, as for one ack: a chunk left over is an orphan
            // in the chunk tube, never a lost message.
            match self.pool.get().await {
                Ok(mut taken) => {
                    for some in chunk_ids.chunks(MAX_PIPELINE_JOBS) {
                        if taken.conn().delete_pipelined(some).await.is_err() {
                            break;
                        }
                    }
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelines_stop_at_a_chunked_job_and_at_the_bounds() {
        let small = vec![b'x'; 100];
        let big = vec![b'x'; 70_000];
        let bodies: Vec<&[u8]> = vec![&small, &small, &big, &small];
        assert_eq!(pipeline_len(&bodies, 65_535), 2);
        assert_eq!(pipeline_len(&bodies[2..], 65_535), 0, "chunked: alone");
        assert_eq!(pipeline_len(&bodies[3..], 65_535), 1);
        // A body that looks like a manifest is stored in chunks too.
        let manifest_like = br#"{"kombu-beanstalk-chunks": [1], "bytes": 1}"#.to_vec();
        assert_eq!(pipeline_len(&[manifest_like.as_slice()], 65_535), 0);

        let many: Vec<&[u8]> = (0..600).map(|_| small.as_slice()).collect();
        assert_eq!(pipeline_len(&many, 65_535), MAX_PIPELINE_JOBS);
        // By bytes: with a large max-job-size, 1 MiB a pipeline, and a job
        // larger than that alone.
        let half = vec![b'x'; 600 << 10];
        let large = vec![b'x'; 2 << 20];
        let bodies: Vec<&[u8]> = vec![&half, &half, &large, &small];
        assert_eq!(pipeline_len(&bodies, 4 << 20), 1);
        assert_eq!(pipeline_len(&bodies[1..], 4 << 20), 1);
        assert_eq!(pipeline_len(&bodies[2..], 4 << 20), 1);
        assert_eq!(pipeline_len(&bodies[3..], 4 << 20), 1);
        assert_eq!(pipeline_len(&[], 65_535), 0);
    }
}
