//! A private Redis Cluster: three masters and three replicas
//! ([`PrivateBroker`]s, append-only, fsync always, cluster-node-timeout
//! 1 s) on free ports, formed with `redis-cli --cluster create`. Dropping
//! the cluster kills every node.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::{BrokerKind, PrivateBroker};
use crate::sentinel::{cli, wait_for};

/// Three masters, three replicas.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<PrivateBroker>,
}

/// A master's port and its replica's, from `CLUSTER NODES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotOwner {
    /// The master serving the slot.
    pub master: u16,
    /// Its replica.
    pub replica: u16,
}

impl RedisCluster {
    /// Start six nodes, form the cluster and wait until every node says
    /// `cluster_state:ok` and every replica is in sync.
    pub fn start() -> io::Result<Self> {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            nodes.push(PrivateBroker::start_with(
                BrokerKind::Redis,
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                ]
                .map(String::from)
                .to_vec(),
            )?);
        }
        let cluster = RedisCluster { nodes };
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for port in cluster.ports() {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let mut child = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other("redis-cli --cluster create: over 30 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create: {status}"
            )));
        }
        for port in cluster.ports() {
            wait_for("cluster_state:ok", Duration::from_secs(20), || {
                cli(port, &["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok"))
            })?;
            wait_for("every replica in sync", Duration::from_secs(20), || {
                cli(port, &["INFO", "replication"]).is_some_and(|i| {
                    i.contains("role:master") || i.contains("master_link_status:up")
                })
            })?;
        }
        Ok(cluster)
    }

    /// Every node's port.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(PrivateBroker::port).collect()
    }

    /// The failover list of every node as `rediscluster://` seeds, each
    /// with `query` (without its `?`).
    pub fn url(&self, query: &str) -> String {
        self.ports()
            .iter()
            .map(|port| format!("rediscluster://127.0.0.1:{port}?{query}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Where logs go (the first node's directory).
    pub fn dir(&self) -> &Path {
        self.nodes[0].dir()
    }

    /// The master serving the hash slot of `key`, and its replica, as a
    /// live node sees them.
    pub fn owner_of(&self, key: &str) -> Option<SlotOwner> {
        let port = self.live_port()?;
        let slot: u16 = cli(port, &["CLUSTER", "KEYSLOT", key])?
            .trim()
            .parse()
            .ok()?;
        let listing = cli(port, &["CLUSTER", "NODES"])?;
        let lines: Vec<Vec<&str>> = listing
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let port_of = |fields: &[&str]| -> Option<u16> {
            fields
                .get(1)?
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        };
        let serves = |fields: &[&str]| {
            fields.iter().skip(8).any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
            })
        };
        let master = lines.iter().find(|f| {
            f.get(2)
                .is_some_and(|flags| flags.contains("master") && !flags.contains("fail"))
                && serves(f)
        })?;
        let replica = lines.iter().find(|f| f.get(3) == master.first())?;
        Some(SlotOwner {
            master: port_of(master)?,
            replica: port_of(replica)?,
        })
    }

    fn live_port(&self) -> Option<u16> {
        self.ports()
            .into_iter()
            .find(|port| cli(*port, &["PING"]).is_some_and(|o| o.contains("PONG")))
    }

    /// SIGKILL the master serving `key`'s slot and wait until its replica
    /// is a master; returns how long the promotion took.
    pub fn kill_master_of(&mut self, key: &str) -> io::Result<Duration> {
        let owner = self
            .owner_of(key)
            .ok_or_else(|| io::Error::other(format!("no master serves the slot of {key:?}")))?;
        let started = Instant::now();
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port() == owner.master) {
            node.kill();
        }
        wait_for(
            "the slot's replica promoted",
            Duration::from_secs(30),
            || {
                cli(owner.replica, &["INFO", "replication"])
                    .is_some_and(|i| i.contains("role:master"))
            },
        )?;
        Ok(started.elapsed())
    }
}
