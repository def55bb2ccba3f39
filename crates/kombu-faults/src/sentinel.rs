//! A private Redis Sentinel group: a master and a replica
//! ([`PrivateBroker`]s, append-only, fsync always) and three sentinels
//! watching the master as [`MASTER`], all on free ports. Dropping the group
//! kills every process.

use std::fs;
use std::io;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::{free_port, BrokerKind, PrivateBroker};

/// The name the sentinels monitor the master under.
pub const MASTER: &str = "kombu";

/// A master, a replica and three sentinels.
#[derive(Debug)]
pub struct SentinelGroup {
    master: PrivateBroker,
    replica: PrivateBroker,
    sentinels: Vec<(Child, u16)>,
}

/// `redis-cli -p <port> <args>`'s output, or `None` when it fails or takes
/// more than 3 s (redis-cli 7.0 has no timeout of its own).
pub(crate) fn cli(port: u16, args: &[&str]) -> Option<String> {
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
    Some(out)
}

/// Poll `ready` every 100 ms until it holds or `limit` passes.
pub(crate) fn wait_for(
    what: &str,
    limit: Duration,
    mut ready: impl FnMut() -> bool,
) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() > deadline {
            return Err(io::Error::other(format!("{what}: not within {limit:?}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

impl SentinelGroup {
    /// Start the group and wait until the replica is in sync and each
    /// sentinel knows the replica and the other two sentinels.
    pub fn start() -> io::Result<Self> {
        let master = PrivateBroker::start(BrokerKind::Redis)?;
        let replica = PrivateBroker::start_with(
            BrokerKind::Redis,
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port().to_string(),
            ],
        )?;
        let mut group = SentinelGroup {
            master,
            replica,
            sentinels: Vec::new(),
        };
        for _ in 0..3 {
            let port = free_port()?;
            let child = group.spawn_sentinel(port)?;
            group.sentinels.push((child, port));
        }
        let replica_port = group.replica.port();
        wait_for("the replica in sync", Duration::from_secs(20), || {
            cli(replica_port, &["INFO", "replication"])
                .is_some_and(|info| info.contains("master_link_status:up"))
        })?;
        for port in group.sentinel_ports() {
            wait_for(
                "each sentinel knows the replica and two other sentinels",
                Duration::from_secs(30),
                || {
                    let count = |what: &str| {
                        cli(port, &["SENTINEL", what, MASTER])
                            .map_or(0, |out| out.lines().filter(|l| *l == "name").count())
                    };
                    count("replicas") == 1 && count("sentinels") == 2
                },
            )?;
        }
        Ok(group)
    }

    fn spawn_sentinel(&self, port: u16) -> io::Result<Child> {
        let dir = self.master.dir();
        // A sentinel rewrites its configuration file: one each.
        let conf = dir.join(format!("sentinel-{port}.conf"));
        fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\n\
                 sentinel monitor {MASTER} 127.0.0.1 {} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 5000\n",
                self.master.port()
            ),
        )?;
        let log = fs::File::create(dir.join(format!("sentinel-{port}.out")))?;
        Command::new(BrokerKind::Redis.binary())
            .arg(&conf)
            .arg("--sentinel")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|(_, port)| *port).collect()
    }

    /// The failover list of the sentinels, each with `master_name` and
    /// `query` (without its `?`).
    pub fn url(&self, query: &str) -> String {
        self.sentinel_ports()
            .iter()
            .map(|port| format!("sentinel://127.0.0.1:{port}/0?master_name={MASTER}&{query}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Where logs go.
    pub fn dir(&self) -> &Path {
        self.master.dir()
    }

    /// The port the sentinels name as the master now.
    pub fn master_port(&self) -> Option<u16> {
        let out = cli(
            self.sentinel_ports()[0],
            &["SENTINEL", "get-master-addr-by-name", MASTER],
        )?;
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// SIGKILL the master and wait until the sentinels name the replica;
    /// returns how long the promotion took.
    pub fn kill_master(&mut self) -> io::Result<Duration> {
        let started = Instant::now();
        self.master.kill();
        let replica = self.replica.port();
        wait_for(
            "the sentinels promote the replica",
            Duration::from_secs(30),
            || self.master_port() == Some(replica),
        )?;
        Ok(started.elapsed())
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        for (child, _) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
