//! A private RabbitMQ cluster: three nodes of the installed server
//! ([`PrivateBroker`]s sharing an Erlang cookie), the second and third
//! joined to the first. Dropping it kills every node.

use std::io;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::PrivateBroker;

/// RabbitMQ's control tool (run as the calling user, like the nodes).
pub const RABBITMQCTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// Nodes joined into one cluster.
#[derive(Debug)]
pub struct RabbitCluster {
    nodes: Vec<PrivateBroker>,
}

/// `rabbitmqctl -n <node> <args>` with the node's cookie; its output, or
/// an error with it, after at most `limit`.
fn ctl(node: &PrivateBroker, args: &[&str], limit: Duration) -> io::Result<String> {
    let mut child = Command::new(RABBITMQCTL)
        .env("HOME", node.dir())
        .args(["-n", node.node()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(format!(
                "rabbitmqctl {args:?} on {}: no answer within {limit:?}",
                node.node()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        io::Read::read_to_string(&mut stdout, &mut out)?;
    }
    if let Some(mut stderr) = child.stderr.take() {
        io::Read::read_to_string(&mut stderr, &mut err)?;
    }
    if status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "rabbitmqctl {args:?} on {}: {status}: {err}{out}",
            node.node()
        )))
    }
}

impl RabbitCluster {
    /// Start `size` nodes and join them into one cluster.
    pub fn start(size: usize) -> io::Result<Self> {
        let cookie = format!(
            "KOMBUFAULTS{}X{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let mut nodes = Vec::with_capacity(size);
        for _ in 0..size {
            nodes.push(PrivateBroker::start_amqp_node(&cookie)?);
        }
        let limit = Duration::from_secs(60);
        let first = nodes[0].node().to_owned();
        for node in &nodes[1..] {
            ctl(node, &["stop_app"], limit)?;
            ctl(node, &["join_cluster", &first], limit)?;
            ctl(node, &["start_app"], limit)?;
        }
        let cluster = RabbitCluster { nodes };
        let status = ctl(&cluster.nodes[0], &["cluster_status"], limit)?;
        for node in &cluster.nodes {
            if !status.contains(node.node()) {
                return Err(io::Error::other(format!(
                    "{} is not in the cluster:\n{status}",
                    node.node()
                )));
            }
        }
        Ok(cluster)
    }

    /// The failover list of the nodes, each with `query` (without its `?`).
    pub fn url(&self, query: &str) -> String {
        self.nodes
            .iter()
            .map(|node| format!("{}?{query}", node.url()))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Where the first node keeps its logs (the peers' logs go there too).
    pub fn dir(&self) -> &std::path::Path {
        self.nodes[0].dir()
    }

    /// The node of `queue`'s quorum leader, from the first live node.
    pub fn leader_of(&self, queue: &str) -> io::Result<usize> {
        let live = self
            .nodes
            .iter()
            .find(|n| n.server_pid().is_some())
            .ok_or_else(|| io::Error::other("no live node"))?;
        let out = ctl(
            live,
            &[
                "list_queues",
                "name",
                "leader",
                "--no-table-headers",
                "--quiet",
            ],
            Duration::from_secs(30),
        )?;
        let leader = out
            .lines()
            .find_map(|line| {
                let mut parts = line.split_whitespace();
                (parts.next() == Some(queue)).then(|| parts.next().map(str::to_owned))?
            })
            .ok_or_else(|| io::Error::other(format!("no quorum leader of {queue}:\n{out}")))?;
        self.nodes
            .iter()
            .position(|n| n.node() == leader)
            .ok_or_else(|| io::Error::other(format!("leader {leader} is not one of ours")))
    }

    /// SIGKILL node `index` (not restarted).
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }
}
