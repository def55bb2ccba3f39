//! `sentinel://`: a master, a replica and three sentinels started by this
//! test on free loopback ports (redis-server, which the redis service
//! installs, runs sentinels too). The transport finds the master through
//! the sentinels; SIGKILL of the master promotes the replica, and the same
//! connection reconnects through the sentinels to it: every message whose
//! publish returned after the promotion is consumed.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{
    Connection, ConnectionOptions, Consumer, Producer, PublishOptions, Queue, Registry,
    TransportOptions,
};
use serde_json::json;
use tokio::process::Child;

#[path = "servers/mod.rs"]
mod servers;
use servers::{
    free_port, losses, publish_through_failover, query, redis_server, server_args, spawn, until,
    Losses, TempDir,
};

const MASTER: &str = "kombu-test";

async fn master_port(sentinel: u16) -> Option<u16> {
    let mut cmd = redis::cmd("SENTINEL");
    cmd.arg("get-master-addr-by-name").arg(MASTER);
    query::<Option<(String, u16)>>(sentinel, &cmd)
        .await
        .ok()
        .flatten()
        .map(|(_, port)| port)
}

/// Messages in `queue`'s lists (one per priority step) on the server at `port`.
async fn stored_on(port: u16, queue: &str) -> i64 {
    let keys: Vec<String> = query(port, redis::cmd("KEYS").arg(format!("{queue}*")))
        .await
        .unwrap();
    let mut total = 0;
    for key in keys {
        total += query::<i64>(port, redis::cmd("LLEN").arg(&key))
            .await
            .unwrap();
    }
    total
}

struct Topology {
    master: Child,
    _replica: Child,
    _sentinels: Vec<Child>,
    master_port: u16,
    replica_port: u16,
    sentinel_ports: Vec<u16>,
    _dir: TempDir,
}

async fn start(program: &Path) -> Topology {
    let dir = std::env::temp_dir().join(kombu_testkit::unique("kombu-sentinel"));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = TempDir(dir);
    let (master_port, replica_port) = (free_port(), free_port());
    let master = spawn(program, &dir.0, &server_args(master_port));
    let mut replica_args = server_args(replica_port);
    replica_args.extend(["--replicaof", "127.0.0.1"].map(String::from));
    replica_args.push(master_port.to_string());
    let replica = spawn(program, &dir.0, &replica_args);
    let sentinel_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let sentinels = sentinel_ports
        .iter()
        .map(|port| {
            // A sentinel rewrites its configuration file: one each.
            let conf = dir.0.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\n\
                     sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 5000\n\
                     sentinel parallel-syncs {MASTER} 1\n"
                ),
            )
            .unwrap();
            spawn(
                program,
                &dir.0,
                &[conf.display().to_string(), "--sentinel".into()],
            )
        })
        .collect();
    let topology = Topology {
        master,
        _replica: replica,
        _sentinels: sentinels,
        master_port,
        replica_port,
        sentinel_ports,
        _dir: dir,
    };
    until("the replica in sync", Duration::from_secs(20), || async {
        let info: String = query(replica_port, redis::cmd("INFO").arg("replication"))
            .await
            .unwrap_or_default();
        info.contains("master_link_status:up")
    })
    .await;
    for &sentinel in &topology.sentinel_ports {
        until(
            "each sentinel knows the replica and the other sentinels",
            Duration::from_secs(30),
            || async move {
                let replicas: Vec<redis::Value> =
                    query(sentinel, redis::cmd("SENTINEL").arg("replicas").arg(MASTER))
                        .await
                        .unwrap_or_default();
                let others: Vec<redis::Value> = query(
                    sentinel,
                    redis::cmd("SENTINEL").arg("sentinels").arg(MASTER),
                )
                .await
                .unwrap_or_default();
                replicas.len() == 1 && others.len() == 2
            },
        )
        .await;
    }
    topology
}

fn connect(topology: &Topology) -> Connection {
    let url = topology
        .sentinel_ports
        .iter()
        .map(|port| format!("sentinel://127.0.0.1:{port}/0"))
        .collect::<Vec<_>>()
        .join(";");
    let mut registry = Registry::new();
    kombu_redis::register(&mut registry);
    let options = ConnectionOptions::new()
        .transport_options(TransportOptions::new().set("master_name", MASTER));
    Connection::with_registry_options(&url, options, Arc::new(registry)).expect("sentinel URL")
}

/// Publish `body`, retrying through a reconnect for up to 30 s.
async fn publish_retrying(conn: &Connection, queue: &str, body: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let producer = Producer::new(conn);
        match producer
            .publish(json!(body), PublishOptions::new().routing_key(queue))
            .await
        {
            Ok(()) => return,
            Err(err) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "publish of {body} kept failing: {err}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_finds_the_master_and_follows_a_failover() {
    let Some(program) = redis_server() else {
        return;
    };
    let mut topology = start(&program).await;
    assert_eq!(
        master_port(topology.sentinel_ports[0]).await,
        Some(topology.master_port)
    );
    let conn = connect(&topology);
    assert_eq!(conn.transport_name(), "sentinel");
    let queue = kombu_testkit::unique("sentinel-q");
    let channel = conn.channel().await.unwrap();
    Queue::new(&queue).declare(channel.as_ref()).await.unwrap();
    drop(channel);

    // Before the failover: stored on the master the sentinels name.
    for i in 0..5 {
        publish_retrying(&conn, &queue, &format!("before-{i}")).await;
    }
    assert_eq!(
        stored_on(topology.master_port, &queue).await,
        5,
        "published to the master"
    );
    // Replicated before the kill (WAIT: the replica has every write).
    let replicated: i64 = query(topology.master_port, redis::cmd("WAIT").arg(1).arg(2000))
        .await
        .unwrap();
    assert_eq!(replicated, 1);

    topology.master.start_kill().unwrap(); // SIGKILL
    let _ = topology.master.wait().await;
    let replica = topology.replica_port;
    let sentinel = topology.sentinel_ports[1];
    until(
        "the sentinels promote the replica",
        Duration::from_secs(30),
        || async move { master_port(sentinel).await == Some(replica) },
    )
    .await;

    // After the promotion: the same connection reaches the new master.
    let after: Vec<String> = (0..5).map(|i| format!("after-{i}")).collect();
    for body in &after {
        publish_retrying(&conn, &queue, body).await;
    }
    let mut consumer = Consumer::builder(&conn)
        .queue(Queue::new(&queue))
        .prefetch_count(10)
        .build()
        .await
        .unwrap();
    let mut got = HashSet::new();
    while got.len() < 10 {
        let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_secs(20), consumer.next()).await
        else {
            break;
        };
        let message = message.unwrap();
        got.insert(message.decode::<String>().unwrap());
        message.ack().await.unwrap();
    }
    for body in &after {
        assert!(
            got.contains(body),
            "{body} published after the promotion was lost: {got:?}"
        );
    }
    // WAIT confirmed the earlier ones on the replica: none lost either.
    for i in 0..5 {
        assert!(
            got.contains(&format!("before-{i}")),
            "before-{i} lost: {got:?}"
        );
    }
    let _ = consumer.close().await;
    let _ = conn.close().await;
}

/// A publisher awaiting each publish keeps going while the master is
/// SIGKILLed: every message whose publish returned after the promotion is
/// consumed. Those acknowledged by the old master shortly before the kill
/// may be lost (Redis replicates asynchronously); the test prints how
/// many, for docs/reliability.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_load_loses_nothing_published_after_the_promotion() {
    let Some(program) = redis_server() else {
        return;
    };
    let mut topology = start(&program).await;
    let conn = connect(&topology);
    let queue = kombu_testkit::unique("sentinel-load");
    let channel = conn.channel().await.unwrap();
    Queue::new(&queue).declare(channel.as_ref()).await.unwrap();
    drop(channel);

    let promoted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = publish_through_failover(&conn, &queue, promoted.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    topology.master.start_kill().unwrap(); // SIGKILL under load
    let _ = topology.master.wait().await;
    let replica = topology.replica_port;
    let sentinel = topology.sentinel_ports[0];
    until(
        "the sentinels promote the replica",
        Duration::from_secs(30),
        || async move { master_port(sentinel).await == Some(replica) },
    )
    .await;
    promoted.store(true, std::sync::atomic::Ordering::Release);
    let returned = publisher.await.unwrap();

    let mut consumer = Consumer::builder(&conn)
        .queue(Queue::new(&queue))
        .prefetch_count(100)
        .build()
        .await
        .unwrap();
    let mut got = HashSet::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_secs(3), consumer.next()).await
    {
        let message = message.unwrap();
        got.insert(message.decode::<String>().unwrap());
        message.ack().await.unwrap();
    }
    let Losses {
        before,
        lost_before,
        after,
        lost_after,
    } = losses(&returned, &got);
    println!(
        "sentinel failover under load: {before} publishes returned before the promotion was seen, \
         {lost_before} of them lost to asynchronous replication; {after} returned after it, {} lost",
        lost_after.len()
    );
    assert!(after > 0, "nothing was published after the promotion");
    assert!(
        lost_after.is_empty(),
        "published after the promotion, then lost: {lost_after:?}"
    );
    let _ = consumer.close().await;
    let _ = conn.close().await;
}
