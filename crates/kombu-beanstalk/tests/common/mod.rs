//! Child processes for the crash and cross-process tests: the test binary
//! runs itself again with `KOMBU_BEANSTALK_CHILD` set, selecting one test
//! that then acts as the child.

#![allow(dead_code)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use kombu_core::{Connection, ConnectionOptions, Registry};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The variable that turns a test into a child.
pub const CHILD_VAR: &str = "KOMBU_BEANSTALK_CHILD";

/// A connection to the test server with these options.
pub fn connect_with(options: ConnectionOptions) -> Option<Connection> {
    let url = kombu_testkit::test_url("beanstalk")?;
    let mut registry = Registry::new();
    kombu_beanstalk::register(&mut registry);
    Some(
        Connection::with_registry_options(&url, options, Arc::new(registry))
            .expect("beanstalk URL"),
    )
}

/// The mode this process runs as child in, if any.
pub fn child_mode() -> Option<String> {
    std::env::var(CHILD_VAR).ok()
}

/// Start this test binary as a child running test `test_name` in `mode`.
pub fn spawn_child(
    test_name: &str,
    mode: &str,
    env: &[(&str, &str)],
) -> (Child, Lines<BufReader<ChildStdout>>) {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, mode)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn child test process");
    let stdout = child.stdout.take().expect("child stdout");
    (child, BufReader::new(stdout).lines())
}

/// The next line of a child's output, within `wait`.
pub async fn next_line(
    lines: &mut Lines<BufReader<ChildStdout>>,
    wait: Duration,
) -> Option<String> {
    match tokio::time::timeout(wait, lines.next_line()).await {
        Ok(Ok(line)) => line,
        _ => None,
    }
}

/// Print a line for the parent and flush it at once.
pub fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Send `signal` (`STOP`, `KILL`, ...) to a process with kill(1).
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Skip the child's output up to `wanted` (the harness may print
/// `test name ... ` before it on the same line).
pub async fn wait_for(lines: &mut Lines<BufReader<ChildStdout>>, wanted: &str) {
    loop {
        match next_line(lines, Duration::from_secs(30)).await {
            Some(line) if line.ends_with(wanted) => return,
            Some(_) => continue,
            None => panic!("the child never said {wanted:?}"),
        }
    }
}
