//! `rediscluster://`: a Redis Cluster of three masters and three replicas
//! started by this test on free loopback ports (cluster-node-timeout 1 s).
//! Every key of a queue is in its slot (the fetch and ack bookkeeping is
//! checked on the server); SIGKILL of the master of a queue's slot under
//! load promotes its replica, and the publisher and the consumer, on one
//! connection, carry on: every message whose publish returned after the
//! promotion is consumed.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Connection, Consumer, Producer, PublishOptions, Queue, Registry};
use redis::cluster_routing::Slot;
use serde_json::json;
use tokio::process::Child;

#[path = "servers/mod.rs"]
mod servers;
use servers::{
    free_port, losses, publish_through_failover, query, redis_server, server_args, spawn, until,
    Losses, TempDir,
};

struct Cluster {
    nodes: Vec<(u16, Child)>,
    _dir: TempDir,
}

impl Cluster {
    fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(port, _)| *port).collect()
    }

    fn url(&self) -> String {
        self.ports()
            .iter()
            .map(|port| format!("rediscluster://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// SIGKILL the node on `port`.
    async fn kill(&mut self, port: u16) {
        let (_, child) = self
            .nodes
            .iter_mut()
            .find(|(p, _)| *p == port)
            .expect("a node of this cluster");
        child.start_kill().unwrap();
        let _ = child.wait().await;
    }
}

/// One line of `CLUSTER NODES`: (id, port, flags, master id, slot ranges).
struct NodeLine {
    id: String,
    port: u16,
    master: bool,
    replica_of: String,
    slots: Vec<(u16, u16)>,
}

fn parse_nodes(listing: &str) -> Vec<NodeLine> {
    listing
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields.get(1)?.split('@').next()?.rsplit(':').next()?;
            let flags = fields.get(2)?;
            let slots = fields
                .iter()
                .skip(8)
                .filter(|f| !f.starts_with('['))
                .filter_map(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect();
            Some(NodeLine {
                id: fields.first()?.to_string(),
                port: port.parse().ok()?,
                master: flags.contains("master") && !flags.contains("fail"),
                replica_of: fields.get(3)?.to_string(),
                slots,
            })
        })
        .collect()
}

/// The master serving the slot of `key` and its replica, as `port` sees it.
async fn owner_of(port: u16, key: &str) -> Option<(u16, Option<u16>)> {
    let slot: u16 = query(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
        .await
        .ok()?;
    let listing: String = query(port, redis::cmd("CLUSTER").arg("NODES")).await.ok()?;
    let nodes = parse_nodes(&listing);
    let master = nodes
        .iter()
        .find(|n| n.master && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))?;
    let replica = nodes
        .iter()
        .find(|n| n.replica_of == master.id)
        .map(|n| n.port);
    Some((master.port, replica))
}

async fn start(program: &Path) -> Cluster {
    let dir = std::env::temp_dir().join(kombu_testkit::unique("kombu-cluster"));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = TempDir(dir);
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let nodes = ports
        .iter()
        .map(|&port| {
            let node_dir = dir.0.join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let mut args = server_args(port);
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                ]
                .map(String::from),
            );
            (port, spawn(program, &node_dir, &args))
        })
        .collect();
    let cluster = Cluster { nodes, _dir: dir };
    for port in cluster.ports() {
        until(
            "each node answers",
            Duration::from_secs(10),
            || async move { query::<String>(port, &redis::cmd("PING")).await.is_ok() },
        )
        .await;
    }
    let mut create = tokio::process::Command::new("redis-cli");
    create.arg("--cluster").arg("create");
    for port in cluster.ports() {
        create.arg(format!("127.0.0.1:{port}"));
    }
    create
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let status = tokio::time::timeout(Duration::from_secs(30), create.status())
        .await
        .expect("redis-cli --cluster create ends within 30 s")
        .expect("redis-cli runs");
    assert!(status.success(), "redis-cli --cluster create: {status}");
    for port in cluster.ports() {
        until(
            "cluster_state:ok on every node",
            Duration::from_secs(20),
            || async move {
                let info: String = query(port, redis::cmd("CLUSTER").arg("INFO"))
                    .await
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
            },
        )
        .await;
    }
    // Every replica attached and in sync before a test kills anything.
    for port in cluster.ports() {
        until(
            "each replica in sync",
            Duration::from_secs(20),
            || async move {
                let info: String = query(port, redis::cmd("INFO").arg("replication"))
                    .await
                    .unwrap_or_default();
                info.contains("role:master") || info.contains("master_link_status:up")
            },
        )
        .await;
    }
    cluster
}

fn connect(cluster: &Cluster) -> Connection {
    let mut registry = Registry::new();
    kombu_redis::register(&mut registry);
    Connection::with_registry(&cluster.url(), Arc::new(registry)).expect("rediscluster URL")
}

async fn cluster_query<T: redis::FromRedisValue>(ports: &[u16], cmd: &redis::Cmd) -> T {
    let client = redis::cluster::ClusterClient::new(
        ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let answer = async {
        let mut conn = client.get_async_connection().await?;
        cmd.query_async(&mut conn).await
    };
    tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("the cluster answers within 5 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queues_keys_share_its_slot_and_an_ack_clears_them() {
    let Some(program) = redis_server() else {
        return;
    };
    let cluster = start(&program).await;
    let ports = cluster.ports();
    let conn = connect(&cluster);
    assert_eq!(conn.transport_name(), "rediscluster");
    let queue = kombu_testkit::unique("cluster-q");
    let channel = conn.channel().await.unwrap();
    Queue::new(&queue)
        .max_priority(9)
        .declare(channel.as_ref())
        .await
        .unwrap();
    drop(channel);
    let producer = Producer::new(&conn);
    for priority in [0u8, 5, 9] {
        producer
            .publish(
                json!(priority),
                PublishOptions::new().routing_key(&queue).priority(priority),
            )
            .await
            .unwrap();
    }
    // kombu's name for the first list; the other steps carry its hash tag.
    let first: i64 = cluster_query(&ports, redis::cmd("LLEN").arg(&queue)).await;
    let step = |n: u8| format!("{{{queue}}}\x06\x16{n}");
    let middle: i64 = cluster_query(&ports, redis::cmd("LLEN").arg(step(3))).await;
    let last: i64 = cluster_query(&ports, redis::cmd("LLEN").arg(step(9))).await;
    // API priority 9 is kombu's 0 (the first list), 5 is 4, 0 is 9.
    assert_eq!((first, middle, last), (1, 1, 1));
    let slot = Slot::for_key(&queue);
    for key in [
        format!("{{{queue}}}\x06\x163"),
        format!("unacked{{{queue}}}"),
        format!("unacked_index{{{queue}}}"),
    ] {
        assert_eq!(Slot::for_key(&key), slot, "{key}");
    }

    let mut consumer = Consumer::builder(&conn)
        .queue(Queue::new(&queue))
        .prefetch_count(1)
        .build()
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(message.decode::<u8>().unwrap(), 9, "highest priority first");
    let unacked: i64 = cluster_query(
        &ports,
        redis::cmd("HLEN").arg(format!("unacked{{{queue}}}")),
    )
    .await;
    let indexed: i64 = cluster_query(
        &ports,
        redis::cmd("ZCARD").arg(format!("unacked_index{{{queue}}}")),
    )
    .await;
    assert_eq!((unacked, indexed), (1, 1), "the fetched message is unacked");
    message.ack().await.unwrap();
    for _ in 0..2 {
        let message = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery within 10 s")
            .unwrap()
            .unwrap();
        message.ack().await.unwrap();
    }
    // Each ack returned once Redis applied it: nothing is left unacked.
    let unacked: i64 = cluster_query(
        &ports,
        redis::cmd("HLEN").arg(format!("unacked{{{queue}}}")),
    )
    .await;
    let indexed: i64 = cluster_query(
        &ports,
        redis::cmd("ZCARD").arg(format!("unacked_index{{{queue}}}")),
    )
    .await;
    assert_eq!((unacked, indexed), (0, 0), "the acks removed them");
    let _ = consumer.close().await;
    let _ = conn.close().await;
}

/// A publisher awaiting each publish and a consumer acking each message
/// run on one connection while the master of the queue's slot is
/// SIGKILLed: the replica takes over, both carry on, and every message
/// whose publish returned after the promotion is consumed. Those
/// acknowledged by the old master just before the kill may be lost (Redis
/// replicates asynchronously); the test prints how many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_master_of_a_queues_slot_under_load_loses_nothing_published_after() {
    let Some(program) = redis_server() else {
        return;
    };
    let mut cluster = start(&program).await;
    let conn = connect(&cluster);
    let queue = kombu_testkit::unique("cluster-load");
    let channel = conn.channel().await.unwrap();
    Queue::new(&queue).declare(channel.as_ref()).await.unwrap();
    drop(channel);
    let any = cluster.ports()[0];
    let (master, replica) = owner_of(any, &queue).await.expect("the slot's owner");
    let replica = replica.expect("the slot's master has a replica");

    let promoted = Arc::new(AtomicBool::new(false));
    let publisher = publish_through_failover(&conn, &queue, promoted.clone());
    let consumed = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let publishing_done = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (conn, queue) = (conn.clone(), queue.clone());
        let (consumed, done) = (consumed.clone(), publishing_done.clone());
        tokio::spawn(async move {
            let mut consumer = Consumer::builder(&conn)
                .queue(Queue::new(&queue))
                .prefetch_count(50)
                .build()
                .await
                .unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            let mut errors = 0;
            while tokio::time::Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_secs(3), consumer.next()).await {
                    Ok(Some(Ok(message))) => {
                        let body = message.decode::<String>().unwrap();
                        // A failed ack comes back after visibility_timeout:
                        // at least once, so the body counts as consumed.
                        let _ = message.ack().await;
                        consumed.lock().unwrap().insert(body);
                    }
                    Ok(Some(Err(err))) => {
                        eprintln!("consumer error: {err}");
                        errors += 1;
                    }
                    Ok(None) => panic!("the consumer's stream ended"),
                    Err(_) if done.load(Ordering::Acquire) => break,
                    Err(_) => {}
                }
            }
            let _ = consumer.close().await;
            errors
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.kill(master).await; // SIGKILL under load
    until(
        "the replica of the slot is promoted",
        Duration::from_secs(30),
        || async move {
            let info: String = query(replica, redis::cmd("INFO").arg("replication"))
                .await
                .unwrap_or_default();
            info.contains("role:master")
        },
    )
    .await;
    promoted.store(true, Ordering::Release);
    let returned = publisher.await.unwrap();
    publishing_done.store(true, Ordering::Release);
    let consumer_errors = consumer.await.unwrap();

    let got = consumed.lock().unwrap().clone();
    let left = conn
        .channel()
        .await
        .unwrap()
        .queue_size(&queue)
        .await
        .map_err(|e| e.to_string());
    let Losses {
        before,
        lost_before,
        after,
        lost_after,
    } = losses(&returned, &got);
    println!(
        "cluster failover under load: {before} publishes returned before the promotion was seen, \
         {lost_before} of them lost to asynchronous replication; {after} returned after it, {} lost; \
         the consumer saw {consumer_errors} errors while it carried on; left in the queue: {left:?}",
        lost_after.len()
    );
    assert!(after > 0, "nothing was published after the promotion");
    assert!(
        lost_after.is_empty(),
        "published after the promotion, then lost: {lost_after:?}"
    );
    let _ = conn.close().await;
}
