//! Pipelined commands: many commands written at once, then their answers
//! read, in order (beanstalkd answers the commands of a connection one
//! after another): one round trip for a batch of puts or deletes instead
//! of one each.
//!
//! From the first byte written until the last answer is read the
//! connection is out of step with the server, so it counts as broken for
//! that long: an I/O error, a timeout, an answer out of protocol, or the
//! caller dropping the future halfway (an outer timeout) leaves it broken,
//! and its owner makes a new one instead of reading stale answers.

use kombu_core::Result;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{push_command, put_answer, Conn};

/// One job of [`Conn::put_pipelined`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutJob<'a> {
    /// beanstalk priority (lower is more urgent).
    pub pri: u32,
    /// Seconds before the job is ready.
    pub delay: u32,
    /// Time to run, in seconds.
    pub ttr: u32,
    /// The job's body.
    pub body: &'a [u8],
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// `put` every job into the used tube ([`use_tube`](Self::use_tube)
    /// first) in one exchange. One answer per job, in order: the new job's
    /// id, or why the server did not store it (`JOB_TOO_BIG`, `DRAINING`,
    /// `OUT_OF_MEMORY`, or `BURIED`: answers after which the connection
    /// stays usable). The outer error is a failure of the exchange itself
    /// (I/O, timeout, an answer out of protocol): the connection is then
    /// broken, and any of the jobs may have been stored.
    ///
    /// The whole batch is written before any answer is read: keep batches
    /// to a size the socket buffers hold the answers of (a few hundred
    /// jobs; the answers are a few bytes each).
    pub async fn put_pipelined(&mut self, jobs: &[PutJob<'_>]) -> Result<Vec<Result<u64>>> {
        let size = jobs.iter().map(|job| job.body.len() + 48).sum();
        let mut buf = Vec::with_capacity(size);
        for job in jobs {
            let line = format!(
                "put {} {} {} {}",
                job.pri,
                job.delay,
                job.ttr,
                job.body.len()
            );
            push_command(&mut buf, &line, Some(job.body));
        }
        self.exchange("put", &buf, jobs.len(), |index, line| {
            put_answer(line, jobs[index].body.len())
        })
        .await
    }

    /// `delete` every job of `ids` in one exchange: for each, true when
    /// deleted, false when it does not exist or another connection holds
    /// it reserved. An error breaks the connection (some of them may have
    /// been deleted).
    pub async fn delete_pipelined(&mut self, ids: &[u64]) -> Result<Vec<bool>> {
        let mut buf = Vec::with_capacity(ids.len() * 24);
        for id in ids {
            push_command(&mut buf, &format!("delete {id}"), None);
        }
        self.exchange("delete", &buf, ids.len(), |_, line| match line {
            "DELETED" => Some(true),
            "NOT_FOUND" => Some(false),
            _ => None,
        })
        .await
    }

    /// Write `buf` (`count` commands), then read and `parse` their answers
    /// (`None`: out of protocol). Broken until the last answer is read.
    async fn exchange<T>(
        &mut self,
        command: &str,
        buf: &[u8],
        count: usize,
        mut parse: impl FnMut(usize, &str) -> Option<T>,
    ) -> Result<Vec<T>> {
        self.check_usable()?;
        if count == 0 {
            return Ok(Vec::new());
        }
        self.broken = true;
        self.write_all(buf).await?;
        let mut answers = Vec::with_capacity(count);
        for index in 0..count {
            let line = self.read_line().await?;
            match parse(index, &line) {
                Some(answer) => answers.push(answer),
                None => return Err(self.unexpected(command, &line)),
            }
        }
        self.broken = false;
        Ok(answers)
    }
}
