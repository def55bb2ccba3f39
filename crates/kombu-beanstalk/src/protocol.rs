//! The beanstalkd text protocol on one TCP connection, async on tokio.
//!
//! One [`Conn`] is one beanstalkd connection: commands run one at a time
//! (the server answers in order), and the connection remembers the tube it
//! `use`s and the tubes it `watch`es so that repeated calls cost nothing.
//! Any I/O error or unexpected answer marks the connection broken; its
//! owner drops it and connects again.

use std::collections::BTreeMap;
use std::time::Duration;

use kombu_core::{Error, ErrorKind, Result};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

mod pipeline;
pub use pipeline::PutJob;
#[cfg(test)]
mod tests;

/// Longest tube name beanstalkd accepts, in bytes.
pub const MAX_TUBE_NAME: usize = 200;

/// Longest answer line we accept (the longest real one is `USING <200 bytes>`).
const MAX_LINE: usize = 1024;

/// Longest data block we accept: beanstalkd's `-z` (max job size)
/// cannot go past 1 GiB. A longer announced length is out of protocol.
const MAX_DATA: usize = 1 << 30;

/// What a data block's buffer starts at; it grows as the bytes arrive,
/// never from the length the server announced alone.
const INITIAL_DATA: usize = 64 * 1024;

/// How long a command waits for its answer by default (see
/// [`Conn::set_io_timeout`]).
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Check that `name` is a tube name beanstalkd accepts: 1 to 200 bytes of
/// letters, digits and `-+/;.$_()`, not starting with `-`.
///
/// ```
/// use kombu_beanstalk::protocol::check_tube_name;
/// assert!(check_tube_name("celery.tasks-1").is_ok());
/// assert!(check_tube_name("-bad").is_err());
/// assert!(check_tube_name("with space").is_err());
/// ```
pub fn check_tube_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::new(
            ErrorKind::Unsupported,
            format!("{name:?} cannot be a beanstalk tube name: {why}"),
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_TUBE_NAME {
        return bad("it is longer than 200 bytes");
    }
    if name.starts_with('-') {
        return bad("it starts with '-'");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-+/;.$_()".contains(*c)))
    {
        return bad(&format!(
            "{c:?} is not allowed (letters, digits and -+/;.$_() only)"
        ));
    }
    Ok(())
}

/// A job as the server hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The server's job id.
    pub id: u64,
    /// The job's body.
    pub body: Vec<u8>,
}

/// The answer to `reserve-with-timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// A job, now reserved by this connection.
    Job(Job),
    /// No job arrived in time.
    TimedOut,
    /// A job this connection reserved is about to run out of its ttr.
    DeadlineSoon,
}

/// Statistics (`stats`, `stats-tube`, `stats-job`) as key/value text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats(pub BTreeMap<String, String>);

impl Stats {
    /// A value as a number (0 when missing).
    pub fn number(&self, key: &str) -> u64 {
        self.0
            .get(key)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
    /// A value as text.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn parse(yaml: &[u8]) -> Stats {
        let text = String::from_utf8_lossy(yaml);
        let mut map = BTreeMap::new();
        for line in text.lines() {
            if let Some((key, value)) = line.split_once(':') {
                let value = value.trim().trim_matches('"').to_owned();
                map.insert(key.trim().to_owned(), value);
            }
        }
        Stats(map)
    }
}

fn protocol_error(message: String) -> Error {
    Error::new(ErrorKind::Protocol, message)
}

/// One connection to beanstalkd (over TCP; any byte stream for the fuzz
/// target, see [`Conn::over`]).
pub struct Conn<S = TcpStream> {
    stream: BufReader<S>,
    used: String,
    watched: Vec<String>,
    broken: bool,
    io_timeout: Option<Duration>,
}

impl<S> std::fmt::Debug for Conn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("used", &self.used)
            .field("watched", &self.watched)
            .field("broken", &self.broken)
            .field("io_timeout", &self.io_timeout)
            .finish()
    }
}

impl Conn {
    /// Connect to `host:port`, within `timeout` when given.
    pub async fn connect(host: &str, port: u16, timeout: Option<Duration>) -> Result<Conn> {
        let connecting = TcpStream::connect((host, port));
        let stream = match timeout {
            Some(limit) => tokio::time::timeout(limit, connecting).await.map_err(|_| {
                Error::new(
                    ErrorKind::Timeout,
                    format!("connecting to beanstalkd at {host}:{port} timed out"),
                )
            })?,
            None => connecting.await,
        }
        .map_err(|e| {
            Error::new(
                ErrorKind::ConnectionRefused,
                format!("cannot connect to beanstalkd at {host}:{port}: {e}"),
            )
        })?;
        let _ = stream.set_nodelay(true);
        Ok(Conn::over(stream))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// A connection over an already open byte stream, in the state of a
    /// new one (using and watching `default`). For the fuzz target, which
    /// plays the server from its input; use [`Conn::connect`].
    #[doc(hidden)]
    pub fn over(stream: S) -> Conn<S> {
        Conn {
            stream: BufReader::new(stream),
            used: "default".into(),
            watched: vec!["default".into()],
            broken: false,
            io_timeout: Some(DEFAULT_IO_TIMEOUT),
        }
    }

    /// Bound every write and every wait for an answer by `timeout`
    /// (`None`: wait forever). A `reserve-with-timeout` waits its own
    /// seconds on top. A server that does not answer in time (hung,
    /// stopped, unreachable) fails the command with
    /// [`ErrorKind::Timeout`] and breaks the connection.
    /// Default: [`DEFAULT_IO_TIMEOUT`].
    pub fn set_io_timeout(&mut self, timeout: Option<Duration>) {
        self.io_timeout = timeout;
    }

    /// [`set_io_timeout`](Self::set_io_timeout), by value.
    pub fn with_io_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// True after an I/O error or an answer out of protocol: drop it.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The tubes this connection watches.
    pub fn watched(&self) -> &[String] {
        &self.watched
    }

    fn lost(&mut self, e: std::io::Error) -> Error {
        self.broken = true;
        Error::new(
            ErrorKind::ConnectionLost,
            format!("beanstalkd connection lost: {e}"),
        )
    }

    fn timed_out(&mut self, limit: Duration) -> Error {
        self.broken = true;
        Error::new(
            ErrorKind::Timeout,
            format!(
                "beanstalkd did not answer within {:.1} s",
                limit.as_secs_f64()
            ),
        )
    }

    fn unexpected(&mut self, command: &str, line: &str) -> Error {
        self.broken = true;
        let kind = match line {
            "OUT_OF_MEMORY" | "DRAINING" => ErrorKind::LimitExceeded,
            "JOB_TOO_BIG" => ErrorKind::Rejected,
            _ => ErrorKind::Protocol,
        };
        Error::new(kind, format!("beanstalkd answered {line:?} to {command}"))
    }

    /// An error unless the connection is usable.
    fn check_usable(&self) -> Result<()> {
        if self.broken {
            return Err(Error::new(
                ErrorKind::ConnectionLost,
                "beanstalkd connection is broken",
            ));
        }
        Ok(())
    }

    async fn send(&mut self, line: &str, data: Option<&[u8]>) -> Result<()> {
        self.check_usable()?;
        let mut buf = Vec::with_capacity(line.len() + 4 + data.map_or(0, |d| d.len() + 2));
        push_command(&mut buf, line, data);
        self.write_all(&buf).await
    }

    /// Write `buf` within the I/O timeout.
    async fn write_all(&mut self, buf: &[u8]) -> Result<()> {
        let limit = self.io_timeout;
        let writing = self.stream.get_mut().write_all(buf);
        let result = match limit {
            Some(limit) => match tokio::time::timeout(limit, writing).await {
                Ok(result) => result,
                Err(_) => return Err(self.timed_out(limit)),
            },
            None => writing.await,
        };
        result.map_err(|e| self.lost(e))
    }

    async fn read_line(&mut self) -> Result<String> {
        self.read_line_within(Duration::ZERO).await
    }

    /// Read an answer line, waiting `extra` on top of the I/O timeout.
    async fn read_line_within(&mut self, extra: Duration) -> Result<String> {
        let mut line = Vec::new();
        let limit = self.io_timeout.map(|t| t + extra);
        let mut limited = (&mut self.stream).take(MAX_LINE as u64);
        let reading = limited.read_until(b'\n', &mut line);
        let result = match limit {
            Some(limit) => match tokio::time::timeout(limit, reading).await {
                Ok(result) => result,
                Err(_) => return Err(self.timed_out(limit)),
            },
            None => reading.await,
        };
        match result {
            Err(e) => return Err(self.lost(e)),
            Ok(0) => {
                return Err(self.lost(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed by the server",
                )))
            }
            Ok(_) => {}
        }
        if !line.ends_with(b"\r\n") {
            self.broken = true;
            return Err(protocol_error("beanstalkd sent an overlong line".into()));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| {
            self.broken = true;
            protocol_error("beanstalkd sent a line that is not UTF-8".into())
        })
    }

    /// Read a data block of `len` bytes and its CRLF.
    async fn read_data(&mut self, len: usize) -> Result<Vec<u8>> {
        if len > MAX_DATA {
            self.broken = true;
            return Err(protocol_error(format!(
                "beanstalkd announced {len} bytes of data (at most {MAX_DATA})"
            )));
        }
        let wanted = len + 2;
        let mut data = Vec::with_capacity(wanted.min(INITIAL_DATA));
        let limit = self.io_timeout;
        let mut limited = (&mut self.stream).take(wanted as u64);
        let reading = limited.read_to_end(&mut data);
        let result = match limit {
            Some(limit) => match tokio::time::timeout(limit, reading).await {
                Ok(result) => result,
                Err(_) => return Err(self.timed_out(limit)),
            },
            None => reading.await,
        };
        result.map_err(|e| self.lost(e))?;
        if data.len() < wanted {
            return Err(self.lost(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed by the server in a data block",
            )));
        }
        if !data.ends_with(b"\r\n") {
            self.broken = true;
            return Err(protocol_error("job data not followed by CRLF".into()));
        }
        data.truncate(len);
        Ok(data)
    }

    async fn call(&mut self, command: &str) -> Result<String> {
        self.send(command, None).await?;
        self.read_line().await
    }

    /// Parse `WORD <n>` answers.
    fn number_after(&mut self, command: &str, line: &str, word: &str) -> Result<u64> {
        line.strip_prefix(word)
            .and_then(|rest| rest.trim().split(' ').next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| self.unexpected(command, line))
    }

    /// Read `<word> <id> <bytes>` + data, or `None` for `NOT_FOUND`.
    async fn job_answer(&mut self, command: &str, word: &str) -> Result<Option<Job>> {
        let line = self.read_line().await?;
        if line == "NOT_FOUND" {
            return Ok(None);
        }
        let mut parts = line.split(' ');
        let (Some(w), Some(id), Some(len)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(self.unexpected(command, &line));
        };
        let (Ok(id), Ok(len)) = (id.parse::<u64>(), len.parse::<usize>()) else {
            return Err(self.unexpected(command, &line));
        };
        if w != word {
            return Err(self.unexpected(command, &line));
        }
        let body = self.read_data(len).await?;
        Ok(Some(Job { id, body }))
    }

    async fn yaml_answer(&mut self, command: &str) -> Result<Option<Vec<u8>>> {
        let line = self.call(command).await?;
        if line == "NOT_FOUND" {
            return Ok(None);
        }
        let len = self.number_after(command, &line, "OK ")? as usize;
        self.read_data(len).await.map(Some)
    }

    /// `use <tube>` (skipped when already used).
    pub async fn use_tube(&mut self, tube: &str) -> Result<()> {
        if self.used == tube {
            return Ok(());
        }
        check_tube_name(tube)?;
        let command = format!("use {tube}");
        let line = self.call(&command).await?;
        if line.strip_prefix("USING ") == Some(tube) {
            self.used = tube.to_owned();
            Ok(())
        } else {
            Err(self.unexpected(&command, &line))
        }
    }

    /// `put` into the used tube; returns the new job's id.
    pub async fn put(&mut self, pri: u32, delay: u32, ttr: u32, body: &[u8]) -> Result<u64> {
        let command = format!("put {pri} {delay} {ttr} {}", body.len());
        self.send(&command, Some(body)).await?;
        let line = self.read_line().await?;
        match put_answer(&line, body.len()) {
            Some(answer) => answer,
            None => Err(self.unexpected("put", &line)),
        }
    }

    /// `use` then `put`.
    pub async fn put_in(
        &mut self,
        tube: &str,
        pri: u32,
        delay: u32,
        ttr: u32,
        body: &[u8],
    ) -> Result<u64> {
        self.use_tube(tube).await?;
        self.put(pri, delay, ttr, body).await
    }

    /// `watch <tube>`.
    pub async fn watch(&mut self, tube: &str) -> Result<()> {
        if self.watched.iter().any(|t| t == tube) {
            return Ok(());
        }
        check_tube_name(tube)?;
        let command = format!("watch {tube}");
        let line = self.call(&command).await?;
        self.number_after(&command, &line, "WATCHING ")?;
        self.watched.push(tube.to_owned());
        Ok(())
    }

    /// `ignore <tube>` (the last watched tube cannot be ignored: the server
    /// refuses, and this returns an error).
    pub async fn ignore(&mut self, tube: &str) -> Result<()> {
        if !self.watched.iter().any(|t| t == tube) {
            return Ok(());
        }
        let command = format!("ignore {tube}");
        let line = self.call(&command).await?;
        if line == "NOT_IGNORED" {
            return Err(Error::new(
                ErrorKind::PreconditionFailed,
                format!("cannot ignore {tube:?}: it is the last watched tube"),
            ));
        }
        self.number_after(&command, &line, "WATCHING ")?;
        self.watched.retain(|t| t != tube);
        Ok(())
    }

    /// Watch exactly `tubes` (watching the new ones first, so the list is
    /// never empty).
    pub async fn set_watched(&mut self, tubes: &[String]) -> Result<()> {
        for tube in tubes {
            self.watch(tube).await?;
        }
        let extra: Vec<String> = self
            .watched
            .iter()
            .filter(|t| !tubes.contains(t))
            .cloned()
            .collect();
        for tube in extra {
            self.ignore(&tube).await?;
        }
        Ok(())
    }

    /// Send `reserve-with-timeout` and read the answer.
    pub async fn reserve_with_timeout(&mut self, seconds: u32) -> Result<Reserved> {
        let command = format!("reserve-with-timeout {seconds}");
        self.send(&command, None).await?;
        let line = self
            .read_line_within(Duration::from_secs(u64::from(seconds)))
            .await?;
        self.reserved_answer(&command, line).await
    }

    async fn reserved_answer(&mut self, command: &str, line: String) -> Result<Reserved> {
        match line.as_str() {
            "TIMED_OUT" => return Ok(Reserved::TimedOut),
            "DEADLINE_SOON" => return Ok(Reserved::DeadlineSoon),
            _ => {}
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("RESERVED"), Some(id), Some(len)) => {
                let (Ok(id), Ok(len)) = (id.parse::<u64>(), len.parse::<usize>()) else {
                    return Err(self.unexpected(command, &line));
                };
                let body = self.read_data(len).await?;
                Ok(Reserved::Job(Job { id, body }))
            }
            _ => Err(self.unexpected(command, &line)),
        }
    }

    /// `reserve-job <id>`: reserve this job (ready, delayed or buried);
    /// `None` when it does not exist or is reserved by someone.
    pub async fn reserve_job(&mut self, id: u64) -> Result<Option<Job>> {
        let command = format!("reserve-job {id}");
        self.send(&command, None).await?;
        let line = self.read_line().await?;
        if line == "NOT_FOUND" {
            return Ok(None);
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("RESERVED"), Some(id), Some(len)) => {
                let (Ok(id), Ok(len)) = (id.parse::<u64>(), len.parse::<usize>()) else {
                    return Err(self.unexpected(&command, &line));
                };
                let body = self.read_data(len).await?;
                Ok(Some(Job { id, body }))
            }
            _ => Err(self.unexpected(&command, &line)),
        }
    }

    async fn simple(&mut self, command: &str, ok: &str) -> Result<bool> {
        let line = self.call(command).await?;
        if line == ok {
            Ok(true)
        } else if line == "NOT_FOUND" {
            Ok(false)
        } else {
            Err(self.unexpected(command, &line))
        }
    }

    /// `delete <id>`: false when the job does not exist or another
    /// connection holds it reserved.
    pub async fn delete(&mut self, id: u64) -> Result<bool> {
        self.simple(&format!("delete {id}"), "DELETED").await
    }

    /// `release <id> <pri> <delay>` of a job this connection reserved.
    pub async fn release(&mut self, id: u64, pri: u32, delay: u32) -> Result<bool> {
        let command = format!("release {id} {pri} {delay}");
        let line = self.call(&command).await?;
        match line.as_str() {
            "RELEASED" => Ok(true),
            "NOT_FOUND" => Ok(false),
            "BURIED" => Err(Error::new(
                ErrorKind::LimitExceeded,
                "beanstalkd buried the released job (out of memory)",
            )),
            _ => Err(self.unexpected(&command, &line)),
        }
    }

    /// `bury <id> <pri>` of a job this connection reserved.
    pub async fn bury(&mut self, id: u64, pri: u32) -> Result<bool> {
        self.simple(&format!("bury {id} {pri}"), "BURIED").await
    }

    /// `touch <id>`: restart the ttr of a job this connection reserved.
    pub async fn touch(&mut self, id: u64) -> Result<bool> {
        self.simple(&format!("touch {id}"), "TOUCHED").await
    }

    /// `kick <bound>` in the used tube: how many jobs came back.
    pub async fn kick(&mut self, bound: u64) -> Result<u64> {
        let command = format!("kick {bound}");
        let line = self.call(&command).await?;
        self.number_after(&command, &line, "KICKED ")
    }

    /// `kick-job <id>`: a buried or delayed job becomes ready.
    pub async fn kick_job(&mut self, id: u64) -> Result<bool> {
        self.simple(&format!("kick-job {id}"), "KICKED").await
    }

    /// `peek <id>`.
    pub async fn peek(&mut self, id: u64) -> Result<Option<Job>> {
        let command = format!("peek {id}");
        self.send(&command, None).await?;
        self.job_answer(&command, "FOUND").await
    }

    /// `peek-ready`, `peek-delayed` or `peek-buried` (`which`) in the used tube.
    pub async fn peek_state(&mut self, which: PeekState) -> Result<Option<Job>> {
        let command = match which {
            PeekState::Ready => "peek-ready",
            PeekState::Delayed => "peek-delayed",
            PeekState::Buried => "peek-buried",
        };
        self.send(command, None).await?;
        self.job_answer(command, "FOUND").await
    }

    /// `stats-job <id>`; `None` when the job does not exist.
    pub async fn stats_job(&mut self, id: u64) -> Result<Option<Stats>> {
        Ok(self
            .yaml_answer(&format!("stats-job {id}"))
            .await?
            .map(|y| Stats::parse(&y)))
    }

    /// `stats-tube <tube>`; `None` when the tube does not exist.
    pub async fn stats_tube(&mut self, tube: &str) -> Result<Option<Stats>> {
        check_tube_name(tube)?;
        Ok(self
            .yaml_answer(&format!("stats-tube {tube}"))
            .await?
            .map(|y| Stats::parse(&y)))
    }

    /// `stats` of the server.
    pub async fn stats(&mut self) -> Result<Stats> {
        let yaml = self.yaml_answer("stats").await?;
        Ok(yaml.map(|y| Stats::parse(&y)).unwrap_or_default())
    }

    /// `list-tube-used`: the tube `put` goes to (a cheap round trip, the
    /// transport's heartbeat).
    pub async fn list_tube_used(&mut self) -> Result<String> {
        let line = self.call("list-tube-used").await?;
        match line.strip_prefix("USING ") {
            Some(tube) => Ok(tube.to_owned()),
            None => Err(self.unexpected("list-tube-used", &line)),
        }
    }

    /// `list-tubes`.
    pub async fn list_tubes(&mut self) -> Result<Vec<String>> {
        let yaml = self.yaml_answer("list-tubes").await?.unwrap_or_default();
        Ok(String::from_utf8_lossy(&yaml)
            .lines()
            .filter_map(|l| l.strip_prefix("- "))
            .map(|t| t.trim().trim_matches('"').to_owned())
            .collect())
    }
}

/// What the answer `line` to a `put` of `len` bytes means: the new job's
/// id, or why it was not stored; `None` for an answer out of protocol
/// (the connection is then out of step: break it). The answers here are
/// the ones after which the server reads the next command as usual (it
/// read or skipped the body): the connection stays usable.
fn put_answer(line: &str, len: usize) -> Option<Result<u64>> {
    if let Some(id) = line.strip_prefix("INSERTED ") {
        return id.trim().parse().ok().map(Ok);
    }
    if line.starts_with("BURIED ") {
        // The server ran out of memory growing its priority queue.
        return Some(Err(Error::new(
            ErrorKind::LimitExceeded,
            "beanstalkd buried the new job (out of memory)",
        )));
    }
    let refused = |kind, message: String| Some(Err(Error::new(kind, message)));
    match line {
        "JOB_TOO_BIG" => refused(
            ErrorKind::Rejected,
            format!("job of {len} bytes is larger than beanstalkd's max-job-size"),
        ),
        "DRAINING" => refused(
            ErrorKind::LimitExceeded,
            "beanstalkd is draining: it takes no new jobs".into(),
        ),
        "OUT_OF_MEMORY" => refused(
            ErrorKind::LimitExceeded,
            "beanstalkd is out of memory: the job was not stored".into(),
        ),
        _ => None,
    }
}

/// Append a command line (and its data block) to `buf`.
fn push_command(buf: &mut Vec<u8>, line: &str, data: Option<&[u8]>) {
    buf.extend_from_slice(line.as_bytes());
    buf.extend_from_slice(b"\r\n");
    if let Some(data) = data {
        buf.extend_from_slice(data);
        buf.extend_from_slice(b"\r\n");
    }
}

/// Which job `peek-*` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeekState {
    /// The next ready job.
    Ready,
    /// The delayed job with the shortest delay left.
    Delayed,
    /// The next buried job.
    Buried,
}
