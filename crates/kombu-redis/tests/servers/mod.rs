//! Redis servers started by a test on free loopback ports, and what the
//! tests that start them share (sentinel.rs, cluster.rs).
#![allow(dead_code)] // each test file uses its own part

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kombu_core::{Connection, Producer, PublishOptions};
use serde_json::json;
use tokio::process::{Child, Command};

/// The redis-server binary, or `None` to skip (a failure under
/// `KOMBU_TEST_REQUIRE=1`).
pub fn redis_server() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("KOMBU_TEST_REQUIRE").is_err(),
            "redis-server is not installed (cargo xtask services up redis installs it)"
        );
        eprintln!("skipped: redis-server is not installed");
    }
    found
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A redis-server child, killed when dropped.
pub fn spawn(program: &Path, dir: &Path, args: &[String]) -> Child {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server starts")
}

pub fn server_args(port: u16) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .map(String::from)
    .to_vec()
}

pub async fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))??;
    tokio::time::timeout(Duration::from_secs(2), cmd.query_async(&mut conn))
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "query timed out")))?
}

/// Poll `check` every 100 ms until it holds; panic with `what` after `limit`.
pub async fn until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A publisher awaiting each publish through a failover (a failed publish
/// is tried again 50 ms later), until 200 publishes returned after
/// `promoted` was set, or 60 s: each body with whether it returned after
/// the promotion was seen.
pub fn publish_through_failover(
    conn: &Connection,
    queue: &str,
    promoted: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(String, bool)>> {
    let (conn, queue) = (conn.clone(), queue.to_owned());
    tokio::spawn(async move {
        let mut returned = Vec::new();
        let producer = Producer::new(&conn);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let (mut after, mut i) = (0, 0u64);
        while after < 200 && tokio::time::Instant::now() < deadline {
            let body = format!("m{i}");
            let was_promoted = promoted.load(Ordering::Acquire);
            if producer
                .publish(json!(body), PublishOptions::new().routing_key(&queue))
                .await
                .is_ok()
            {
                returned.push((body, was_promoted));
                after += usize::from(was_promoted);
                i += 1;
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        returned
    })
}

/// What a failover cost: publishes returned before and after the
/// promotion, and those of each not consumed.
#[derive(Debug)]
pub struct Losses {
    pub before: usize,
    pub lost_before: usize,
    pub after: usize,
    pub lost_after: Vec<String>,
}

/// Count what of `returned` (from [`publish_through_failover`]) is not in `got`.
pub fn losses(returned: &[(String, bool)], got: &HashSet<String>) -> Losses {
    let lost = |after: bool| {
        returned
            .iter()
            .filter(|(body, p)| *p == after && !got.contains(body))
            .map(|(body, _)| body.clone())
            .collect::<Vec<_>>()
    };
    Losses {
        before: returned.iter().filter(|(_, p)| !p).count(),
        lost_before: lost(false).len(),
        after: returned.iter().filter(|(_, p)| *p).count(),
        lost_after: lost(true),
    }
}
