//! Helpers for tests: server URLs, unique names, receiving with a timeout.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Channel, Connection, Consumer, Error, ErrorKind, Message, Registry, Result};

/// How long a check waits for a message before it fails.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(15);

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
    match tokio::time::timeout(RECV_TIMEOUT, consumer.next()).await {
        Ok(Some(message)) => message,
        Ok(None) => Err(Error::new(ErrorKind::Closed, "consumer stream ended")),
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!("no message within {RECV_TIMEOUT:?}"),
        )),
    }
}

/// The next `n` messages of `consumer`.
pub async fn recv_n(consumer: &mut Consumer, n: usize) -> Result<Vec<Message>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(recv(consumer).await?);
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
    /// Delete everything recorded.
    pub async fn run(self, channel: &dyn Channel) {
        for queue in &self.queues {
            let _ = channel.queue_delete(queue).await;
        }
        for exchange in &self.exchanges {
            let _ = channel.exchange_delete(exchange).await;
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
