//! Helpers for tests: server URLs, unique names, receiving with a timeout.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{
    Channel, Connection, Consumer, ConsumerBuilder, Error, ErrorKind, Message, Registry, Result,
    RetryPolicy,
};

/// How long a check waits for a message before it fails.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(15);

/// How long one conformance check may run in all before it fails (a few
/// times the slowest check's normal duration on the slowest stand-in).
/// `KOMBU_TEST_CHECK_SECS` overrides it.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(120);

/// How long closing the connection after a check may take.
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

tokio::task_local! {
    /// What the running check is doing now (for the deadline's message).
    static STEP: std::sync::Mutex<String>;
}

/// Note what the running check does now; a check that runs past its
/// deadline fails with the last step noted. Outside a check, a no-op.
///
/// ```
/// kombu_testkit::step("publishing 5 messages");
/// ```
pub fn step(what: impl Into<String>) {
    let what = what.into();
    let _ = STEP.try_with(|step| {
        if let Ok(mut step) = step.lock() {
            *step = what;
        }
    });
}

/// The deadline of one check: [`CHECK_DEADLINE`] or `KOMBU_TEST_CHECK_SECS`.
fn check_deadline() -> Duration {
    std::env::var("KOMBU_TEST_CHECK_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(CHECK_DEADLINE, Duration::from_secs)
}

/// Run the conformance check `name` on `conn` within its deadline, then
/// close the connection (within 10 s). Panics, naming the check, the URL
/// (password masked) and the last [`step`], when the check fails or runs
/// past its deadline: what [`conformance_tests!`](crate::conformance_tests)
/// expands to.
///
/// ```
/// # async fn demo(conn: kombu_core::Connection) {
/// kombu_testkit::run_check("my_check", &conn, async { Ok(()) }).await;
/// # }
/// ```
pub async fn run_check(
    name: &str,
    conn: &Connection,
    check: impl std::future::Future<Output = Result<()>>,
) {
    let deadline = check_deadline();
    let started = std::time::Instant::now();
    let (result, last_step) = STEP
        .scope(std::sync::Mutex::new("starting".into()), async {
            let result = tokio::time::timeout(deadline, check).await;
            let last = STEP.with(|s| s.lock().map(|s| s.clone()).unwrap_or_default());
            (result, last)
        })
        .await;
    let _ = tokio::time::timeout(CLOSE_DEADLINE, conn.close()).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(err)) => panic!(
            "{name} failed on {} after {:.1} s: {err} (last step: {last_step})",
            conn.as_uri(),
            started.elapsed().as_secs_f64()
        ),
        Err(_) => panic!(
            "{name} did not finish within {deadline:?} on {}: it was {last_step}",
            conn.as_uri()
        ),
    }
}

/// How consumers made by checks reconnect: a few quick tries, then the
/// stream gives the connection error (a consumer's default retries for
/// ever, which would turn a dead server into a hung test).
pub fn test_reconnect_policy() -> RetryPolicy {
    RetryPolicy::new()
        .max_retries(3)
        .interval_start(Duration::from_millis(200))
        .interval_step(Duration::from_millis(500))
        .interval_max(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
}

/// A consumer builder for tests: [`Consumer::builder`] with
/// [`test_reconnect_policy`].
pub fn consumer_builder(conn: &Connection) -> ConsumerBuilder {
    Consumer::builder(conn).reconnect(test_reconnect_policy())
}

fn required() -> bool {
    matches!(
        std::env::var("KOMBU_TEST_REQUIRE").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// The URL of the test server for `name` (`KOMBU_TEST_<NAME>_URL`), or
/// `None` after printing a skip line. Under `KOMBU_TEST_REQUIRE=1` a
/// missing URL panics, so CI never skips silently.
///
/// ```
/// if std::env::var("KOMBU_TEST_REQUIRE").is_err() {
///     assert_eq!(kombu_testkit::test_url("nosuch"), None);
/// }
/// ```
pub fn test_url(name: &str) -> Option<String> {
    require_env(&format!(
        "KOMBU_TEST_{}_URL",
        name.to_ascii_uppercase().replace('-', "_")
    ))
}

/// The value of environment variable `var`, or `None` after printing a
/// skip line (a panic under `KOMBU_TEST_REQUIRE=1`).
pub fn require_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Some(value),
        _ if required() => {
            panic!("{var} is not set and KOMBU_TEST_REQUIRE=1: start the service (cargo xtask services up) and export it (cargo xtask services env)")
        }
        _ => {
            eprintln!("SKIP: {var} is not set (run `cargo xtask services up` and `eval \"$(cargo xtask services env)\"`)");
            None
        }
    }
}

/// A connection to the test server of transport `name`, with a registry
/// holding that transport only; `None` when its URL is not set.
pub fn connection_for(name: &str, register: fn(&mut Registry)) -> Option<Connection> {
    let url = test_url(name)?;
    let mut registry = Registry::new();
    register(&mut registry);
    match Connection::with_registry(&url, Arc::new(registry)) {
        Ok(conn) => Some(conn),
        Err(err) => panic!(
            "KOMBU_TEST_{}_URL is not usable: {err}",
            name.to_ascii_uppercase()
        ),
    }
}

/// `prefix-<random>`: a name no other test run uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Print that a check was skipped, and why; returns `Ok(())`.
pub fn skip(check: &str, why: &str) -> Result<()> {
    eprintln!("SKIP {check}: {why}");
    Ok(())
}

/// The next message of `consumer`, or an error after [`RECV_TIMEOUT`].
pub async fn recv(consumer: &mut Consumer) -> Result<Message> {
    recv_within(consumer, RECV_TIMEOUT, "a message").await
}

/// The next message of `consumer` within `wait`; the error says what was
/// awaited (`what`) and what came instead (a stream end, an error, nothing).
pub async fn recv_within(consumer: &mut Consumer, wait: Duration, what: &str) -> Result<Message> {
    step(format!("waiting up to {wait:?} for {what}"));
    match tokio::time::timeout(wait, consumer.next()).await {
        Ok(Some(Ok(message))) => Ok(message),
        Ok(Some(Err(err))) => Err(Error::new(
            err.kind(),
            format!("waiting for {what}, the consumer gave an error: {err}"),
        )),
        Ok(None) => Err(Error::new(
            ErrorKind::Closed,
            format!("waiting for {what}, the consumer stream ended"),
        )),
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!("waited {wait:?} for {what}; nothing came"),
        )),
    }
}

/// The next `n` messages of `consumer` (each within [`RECV_TIMEOUT`]).
pub async fn recv_n(consumer: &mut Consumer, n: usize) -> Result<Vec<Message>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let what = format!("message {} of {n}", i + 1);
        out.push(recv_within(consumer, RECV_TIMEOUT, &what).await?);
    }
    Ok(out)
}

/// Queues and exchanges a check made, deleted at the end (best effort).
#[derive(Default)]
pub struct Cleanup {
    queues: Vec<String>,
    exchanges: Vec<String>,
}

impl Cleanup {
    /// Nothing to clean yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Delete this queue at the end.
    pub fn queue(&mut self, name: &str) -> String {
        self.queues.push(name.to_owned());
        name.to_owned()
    }
    /// Delete this exchange at the end.
    pub fn exchange(&mut self, name: &str) -> String {
        self.exchanges.push(name.to_owned());
        name.to_owned()
    }
    /// Delete everything recorded, with each queue's quarantine (where a
    /// check's rejects went; each deletion bounded: a dead server does not
    /// hold up the check's result).
    pub async fn run(self, channel: &dyn Channel) {
        step("deleting the check's queues and exchanges");
        let limit = Duration::from_secs(5);
        for queue in &self.queues {
            let _ = tokio::time::timeout(limit, channel.queue_delete(queue)).await;
            let quarantine = kombu_core::quarantine_of(queue);
            if !queue.ends_with(kombu_core::QUARANTINE_SUFFIX) && !self.queues.contains(&quarantine)
            {
                let _ = tokio::time::timeout(limit, channel.queue_delete(&quarantine)).await;
            }
        }
        for exchange in &self.exchanges {
            let _ = tokio::time::timeout(limit, channel.exchange_delete(exchange)).await;
        }
    }
}

/// The Python kombu 5.7 interpreter for interop tests (`KOMBU_TEST_PYTHON`,
/// set by `cargo xtask test`; `cargo xtask python` installs it and prints
/// the path), or `None` after printing a skip line.
pub fn python_peer() -> Option<std::path::PathBuf> {
    require_env("KOMBU_TEST_PYTHON").map(std::path::PathBuf::from)
}

/// Run a Python `script` with the peer interpreter and these extra
/// environment variables, on a blocking thread; returns its stdout, or an
/// error with its stderr when it exits non-zero or runs longer than 60 s.
pub async fn run_python(
    python: &std::path::Path,
    script: &str,
    env: &[(&str, &str)],
) -> Result<String> {
    let python = python.to_path_buf();
    let script = script.to_owned();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python)
            .arg("-c")
            .arg(&script)
            .envs(env)
            .stdin(std::process::Stdio::null())
            .output()
    });
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .map_err(|_| Error::new(ErrorKind::Timeout, "python peer ran over 60 s"))?
        .map_err(|e| Error::new(ErrorKind::Other, e.to_string()))?
        .map_err(|e| Error::new(ErrorKind::Other, format!("cannot run python: {e}")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::new(
            ErrorKind::Other,
            format!(
                "python peer failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
        ))
    }
}

/// The lines a child process prints, read on a thread of their own, so
/// that a test waits for each with a deadline (a child that hangs fails
/// the test saying what it waited for, instead of blocking it).
///
/// ```
/// use std::time::Duration;
/// let mut child = std::process::Command::new("echo")
///     .arg("ready")
///     .stdout(std::process::Stdio::piped())
///     .spawn()
///     .unwrap();
/// let mut lines = kombu_testkit::ChildLines::new(child.stdout.take().unwrap());
/// assert_eq!(lines.next_within(Duration::from_secs(5)).as_deref(), Some("ready"));
/// assert_eq!(lines.next_within(Duration::from_secs(5)), None); // it ended
/// child.wait().unwrap();
/// ```
pub struct ChildLines {
    lines: std::sync::mpsc::Receiver<String>,
}

impl ChildLines {
    /// Start reading `output` (a child's stdout or stderr) line by line.
    pub fn new(output: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(output)
                .lines()
                .map_while(std::result::Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        ChildLines { lines: rx }
    }

    /// The next line within `wait`; `None` when the output ended or
    /// nothing came in time.
    pub fn next_within(&mut self, wait: Duration) -> Option<String> {
        self.lines.recv_timeout(wait).ok()
    }

    /// The next line within `wait`, or a panic saying what was awaited.
    pub fn expect_within(&mut self, wait: Duration, what: &str) -> String {
        match self.lines.recv_timeout(wait) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("waited {wait:?} for {what}; the child printed nothing")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("waiting for {what}, the child's output ended")
            }
        }
    }

    /// Skip lines until one ends with `wanted` (libtest may print
    /// `test name ... ` before it), within `wait` in all.
    pub fn wait_for(&mut self, wanted: &str, wait: Duration) {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let what = format!("a line ending with {wanted:?}");
            if self.expect_within(left, &what).ends_with(wanted) {
                return;
            }
        }
    }

    /// Every line printed until the output ends, for at most `wait`.
    pub fn rest_within(&mut self, wait: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + wait;
        let mut rest = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => rest.push(line),
                Err(_) => return rest,
            }
        }
    }
}
