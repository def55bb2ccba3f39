//! Round trips through real brokers: `kombu publish` in one process,
//! `kombu consume` in another. Each transport runs only when it is compiled
//! into the binary (the facade's `full` feature) and its server URL is set
//! (`KOMBU_TEST_REDIS_URL`, `KOMBU_TEST_AMQP_URL`; see `cargo xtask services env`).

mod common;

use std::time::Duration;

use common::{command, compiled_schemes, kombu, kombu_stdin, wait};
use serde_json::json;

/// The URL of the test service `service` (`KOMBU_TEST_<SERVICE>_URL`),
/// when the binary has `scheme` and the service is configured; `None`
/// (after a SKIP line) otherwise.
fn broker_url(service: &str, scheme: &str) -> Option<String> {
    if !compiled_schemes().iter().any(|s| s == scheme) {
        eprintln!("SKIP {scheme}: not compiled into kombu (the facade's `full` feature lacks it)");
        return None;
    }
    kombu_testkit::test_url(service)
}

/// Deletes the queue when the test ends, pass or fail.
struct Scratch<'a> {
    url: &'a str,
    queue: String,
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        let _ = kombu(&["queue", "delete", "--url", self.url, &self.queue]);
    }
}

fn scratch<'a>(url: &'a str, prefix: &str) -> Scratch<'a> {
    Scratch {
        url,
        queue: kombu_testkit::unique(prefix),
    }
}

fn queue_size(url: &str, queue: &str) -> u64 {
    let run = kombu(&["queue", "size", "--url", url, queue]);
    run.expect_code(0);
    run.stdout.trim().parse().expect("a number")
}

fn json_bodies_headers_and_properties(url: &str) {
    let q = scratch(url, "cli-json");
    let run = kombu(&[
        "publish",
        "--url",
        url,
        "--queue",
        &q.queue,
        "--count",
        "5",
        "--header",
        "app=cli",
        "--header",
        "n=7",
        "--priority",
        "3",
        r#"{"i": {i}, "s": "héllo"}"#,
    ]);
    run.expect_code(0);
    assert!(
        run.stderr.starts_with("published 5 messages"),
        "{}",
        run.stderr
    );
    assert_eq!(queue_size(url, &q.queue), 5);

    let run = kombu(&[
        "consume",
        "--url",
        url,
        "--queue",
        &q.queue,
        "--count",
        "5",
        "--timeout",
        "20",
    ]);
    run.expect_code(0);
    let lines = run.json_lines();
    assert_eq!(lines.len(), 5, "{}", run.stdout);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["body"], json!({"i": i, "s": "héllo"}), "{line}");
        assert_eq!(line["content_type"], "application/json");
        assert_eq!(line["content_encoding"], "utf-8");
        assert_eq!(line["headers"]["app"], "cli");
        assert_eq!(line["headers"]["n"], 7);
        assert_eq!(line["properties"]["priority"], 3);
        assert_eq!(line["properties"]["delivery_mode"], 2);
        assert_eq!(line["delivery_info"]["exchange"], "");
        assert_eq!(line["delivery_info"]["routing_key"], q.queue.as_str());
        assert_eq!(line["delivery_info"]["redelivered"], false);
    }
    assert_eq!(
        queue_size(url, &q.queue),
        0,
        "every printed message was acked"
    );
}

fn text_bytes_and_compressed_bodies(url: &str) {
    let q = scratch(url, "cli-bodies");
    kombu(&[
        "publish",
        "--url",
        url,
        "--queue",
        &q.queue,
        "--serializer",
        "text",
        "plain {i}",
    ])
    .expect_code(0);
    kombu_stdin(
        &["publish", "--url", url, "--queue", &q.queue, "-"],
        &[0, 159, 146, 150],
    )
    .expect_code(0);
    kombu(&[
        "publish",
        "--url",
        url,
        "--queue",
        &q.queue,
        "--serializer",
        "msgpack",
        "--compression",
        "zlib",
        r#"{"a": [1, 2]}"#,
    ])
    .expect_code(0);
    kombu(&[
        "publish",
        "--url",
        url,
        "--queue",
        &q.queue,
        "--serializer",
        "yaml",
        r#"{"y": true}"#,
    ])
    .expect_code(0);

    // Only json accepted: the yaml body is shown raw, with the reason.
    let run = kombu(&[
        "consume",
        "--url",
        url,
        "--queue",
        &q.queue,
        "--count",
        "4",
        "--timeout",
        "20",
        "--accept",
        "json,msgpack,raw,text",
    ]);
    run.expect_code(0);
    let mut lines = run.json_lines();
    assert_eq!(lines.len(), 4, "{}", run.stdout);
    // Each message came from another process: a store that orders by a
    // process-dependent id (MongoDB's ObjectId, as in kombu) need not keep
    // their order, so look at them by content type.
    lines.sort_by_key(|line| line["content_type"].as_str().unwrap_or_default().to_owned());
    assert_eq!(lines[3]["body"], "plain 0");
    assert_eq!(lines[3]["content_type"], "text/plain");
    assert_eq!(lines[0]["body"], json!({"base64": "AJ+Slg=="}));
    assert_eq!(lines[0]["content_type"], "application/data");
    assert_eq!(lines[1]["body"], json!({"a": [1, 2]}));
    assert_eq!(lines[1]["content_type"], "application/x-msgpack");
    assert_eq!(lines[1]["headers"]["compression"], "application/x-gzip");
    assert_eq!(lines[2]["content_type"], "application/x-yaml");
    assert!(lines[2]["body"]["base64"].is_string(), "{}", lines[2]);
    assert!(lines[2]["error"]
        .as_str()
        .unwrap()
        .contains("content disallowed"));
}

fn topic_exchange_routing(url: &str) {
    let q = scratch(url, "cli-topic");
    let exchange = kombu_testkit::unique("cli-logs");
    let bind = [
        "--exchange",
        exchange.as_str(),
        "--type",
        "topic",
        "--binding-key",
        "*.error",
    ];
    // Declare the queue and its binding first (and on every client: virtual
    // transports may keep bindings per process).
    let mut args = vec![
        "consume",
        "--url",
        url,
        "--queue",
        &q.queue,
        "--timeout",
        "0.1",
    ];
    args.extend(bind);
    if url.starts_with("sqs://") {
        // A consumer that exits 0.1 s in leaves its SQS long poll (10 s)
        // running on the server, which may take the next message and hide
        // it for the visibility timeout (kombu behaves the same; see
        // docs/transports/sqs.md). This step only declares: no long poll.
        args.extend(["--option", "wait_time_seconds=0"]);
    }
    kombu(&args).expect_code(0);

    for rk in ["app.error", "app.info", "db.error"] {
        let mut args = vec![
            "publish",
            "--url",
            url,
            "--routing-key",
            rk,
            "--queue",
            &q.queue,
        ];
        args.extend(bind);
        args.push(rk);
        kombu(&args).expect_code(0);
    }
    let mut args = vec![
        "consume",
        "--url",
        url,
        "--queue",
        &q.queue,
        "--count",
        "2",
        "--timeout",
        "20",
    ];
    args.extend(bind);
    let run = kombu(&args);
    run.expect_code(0);
    let mut lines = run.json_lines();
    // One publishing process per message: order across processes is the
    // store's (MongoDB orders by ObjectId, as kombu does), so sort.
    lines.sort_by_key(|l| {
        l["delivery_info"]["routing_key"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    let keys: Vec<&str> = lines
        .iter()
        .map(|l| l["delivery_info"]["routing_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["app.error", "db.error"]);
    assert_eq!(lines[0]["delivery_info"]["exchange"], exchange.as_str());
    assert_eq!(lines[0]["body"], "app.error");
    assert_eq!(queue_size(url, &q.queue), 0, "app.info matched no binding");
}

fn timeout_with_fewer_messages(url: &str) {
    let q = scratch(url, "cli-timeout");
    kombu(&["publish", "--url", url, "--queue", &q.queue, "only one"]).expect_code(0);
    let run = kombu(&[
        "consume",
        "--url",
        url,
        "--queue",
        &q.queue,
        "--count",
        "3",
        "--timeout",
        "1.5",
    ]);
    run.expect_code(1);
    assert_eq!(run.json_lines().len(), 1);
    let line = run.one_error_line();
    assert!(line.contains("received 1 of 3 messages"), "{line}");
}

fn requeue_peeks(url: &str) {
    let q = scratch(url, "cli-peek");
    kombu(&[
        "publish", "--url", url, "--queue", &q.queue, "--count", "3", "m{i}",
    ])
    .expect_code(0);
    let run = kombu(&[
        "consume",
        "--url",
        url,
        "--queue",
        &q.queue,
        "--count",
        "3",
        "--requeue",
        "--timeout",
        "20",
    ]);
    run.expect_code(0);
    assert_eq!(run.json_lines().len(), 3);
    assert_eq!(queue_size(url, &q.queue), 3, "a peek puts everything back");
    let run = kombu(&[
        "consume",
        "--url",
        url,
        "--queue",
        &q.queue,
        "--count",
        "3",
        "--timeout",
        "20",
    ]);
    run.expect_code(0);
    let mut bodies: Vec<String> = run
        .json_lines()
        .iter()
        .map(|l| l["body"].as_str().unwrap().to_owned())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["m0", "m1", "m2"]);
}

fn count_takes_no_more_than_asked(url: &str) {
    let q = scratch(url, "cli-count");
    kombu(&[
        "publish", "--url", url, "--queue", &q.queue, "--count", "10", "m{i}",
    ])
    .expect_code(0);
    for extra in [&[][..], &["--no-ack"][..]] {
        let mut args = vec![
            "consume",
            "--url",
            url,
            "--queue",
            &q.queue,
            "--count",
            "2",
            "--prefetch",
            "50",
            "--timeout",
            "20",
        ];
        args.extend(extra);
        let run = kombu(&args);
        run.expect_code(0);
        let lines = run.json_lines();
        assert_eq!(lines.len(), 2);
        assert!(lines
            .iter()
            .all(|l| l["delivery_info"]["redelivered"] == false));
    }
    assert_eq!(queue_size(url, &q.queue), 6);
    // What is left was never delivered, so it is not flagged redelivered.
    let run = kombu(&[
        "consume",
        "--url",
        url,
        "--queue",
        &q.queue,
        "--count",
        "6",
        "--timeout",
        "20",
    ]);
    run.expect_code(0);
    assert!(
        run.json_lines()
            .iter()
            .all(|l| l["delivery_info"]["redelivered"] == false),
        "{}",
        run.stdout
    );
}

/// Start `kombu consume`, read `lines` lines, send SIGINT, then collect the rest.
#[cfg(unix)]
fn interrupt_after(args: &[&str], lines: usize) -> (common::Run, usize) {
    let mut child = command(args).spawn().expect("run kombu");
    let mut stdout = kombu_testkit::ChildLines::new(child.stdout.take().unwrap());
    for i in 0..lines {
        stdout.expect_within(
            Duration::from_secs(30),
            &format!("line {} of {lines} from kombu consume", i + 1),
        );
    }
    let mut printed = lines;
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    printed += stdout.rest_within(Duration::from_secs(30)).len();
    let run = wait(child);
    (run, printed)
}

#[cfg(unix)]
fn ctrl_c_returns_unacked_messages(url: &str) {
    let q = scratch(url, "cli-sigint");
    kombu(&[
        "publish", "--url", url, "--queue", &q.queue, "--count", "20", "m{i}",
    ])
    .expect_code(0);
    // A peek holds all 20 unacked when Ctrl-C comes: all go back.
    let (run, printed) = interrupt_after(
        &["consume", "--url", url, "--queue", &q.queue, "--requeue"],
        20,
    );
    run.expect_code(130);
    assert_eq!(printed, 20);
    assert!(
        run.one_error_line()
            .contains("interrupted after 20 messages"),
        "{}",
        run.stderr
    );
    assert_eq!(queue_size(url, &q.queue), 20);
    // Acking: whatever was printed was acked, the rest is back in the queue.
    let (run, printed) = interrupt_after(
        &[
            "consume",
            "--url",
            url,
            "--queue",
            &q.queue,
            "--prefetch",
            "5",
        ],
        3,
    );
    run.expect_code(130);
    assert_eq!(queue_size(url, &q.queue), 20 - printed as u64);
}

/// A message rejected (no dead-letter exchange) lands in the queue's
/// quarantine: `kombu queue quarantine show` prints it and leaves it,
/// `requeue` moves it back, `purge` empties the quarantine.
fn quarantine_show_requeue_purge(url: &str) {
    let q = scratch(url, "cli-quar");
    let quarantine = kombu::quarantine_of(&q.queue);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reject_one = |body: &str| {
        runtime.block_on(async {
            kombu::install_default_transports();
            let conn = kombu::Connection::new(url).unwrap();
            let channel = conn.channel().await.unwrap();
            kombu::Queue::new(&q.queue)
                .declare(channel.as_ref())
                .await
                .unwrap();
            kombu::Producer::new(&conn)
                .publish(
                    json!(body),
                    kombu::PublishOptions::new().routing_key(&q.queue),
                )
                .await
                .unwrap();
            let mut consumer = kombu::Consumer::builder(&conn)
                .queue(kombu::Queue::new(&q.queue))
                .build()
                .await
                .unwrap();
            use futures::StreamExt;
            let m = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            m.reject().await.unwrap();
            consumer.close().await.unwrap();
            conn.close().await.unwrap();
        })
    };
    let caps = runtime.block_on(async {
        kombu::install_default_transports();
        kombu::Connection::new(url)
            .unwrap()
            .capabilities()
            .await
            .unwrap()
    });
    if !caps.quarantine {
        eprintln!("SKIP quarantine commands: {url} keeps no quarantine");
        return;
    }
    reject_one("first");
    let show = kombu(&["queue", "quarantine", "show", "--url", url, &q.queue]);
    show.expect_code(0);
    let lines = show.json_lines();
    assert_eq!(lines[0]["body"], "first", "{}", show.stdout);
    assert_eq!(lines[0]["headers"]["x-death"][0]["reason"], "rejected");
    assert_eq!(
        queue_size(url, &quarantine),
        1,
        "show leaves it quarantined"
    );
    let requeue = kombu(&["queue", "quarantine", "requeue", "--url", url, &q.queue]);
    requeue.expect_code(0);
    assert_eq!(requeue.stdout.trim(), "1");
    assert_eq!(queue_size(url, &quarantine), 0);
    assert_eq!(queue_size(url, &q.queue), 1, "back in its queue");
    let consumed = kombu(&[
        "consume",
        "--url",
        url,
        "--queue",
        &q.queue,
        "--count",
        "1",
        "--timeout",
        "10",
    ]);
    consumed.expect_code(0);
    assert_eq!(consumed.json_lines()[0]["body"], "first");
    reject_one("second");
    let purge = kombu(&["queue", "quarantine", "purge", "--url", url, &q.queue]);
    purge.expect_code(0);
    assert_eq!(purge.stdout.trim(), "1");
    let _ = kombu(&["queue", "delete", "--url", url, &quarantine]);
}

/// Fanout to two consumer processes: each `kombu consume` of its own
/// queue bound to one fanout exchange gets the message `kombu publish`
/// sends there (published again every 300 ms until both have one: with
/// PUB/SUB fanout a message sent before a consumer subscribed is not
/// kept).
fn fanout_to_two_consumer_processes(url: &str) {
    let (qa, qb) = (scratch(url, "cli-fan-a"), scratch(url, "cli-fan-b"));
    let exchange = kombu_testkit::unique("cli-fan");
    let bind = ["--exchange", exchange.as_str(), "--type", "fanout"];
    let consumer = |queue: &str| {
        let mut args = vec![
            "consume",
            "--url",
            url,
            "--queue",
            queue,
            "--count",
            "1",
            "--timeout",
            "20",
        ];
        args.extend(bind);
        command(&args).spawn().expect("run kombu consume")
    };
    let (mut a, mut b) = (consumer(&qa.queue), consumer(&qb.queue));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let mut args = vec!["publish", "--url", url];
        args.extend(bind);
        args.push("to everyone");
        kombu(&args).expect_code(0);
        let done = |child: &mut std::process::Child| child.try_wait().ok().flatten().is_some();
        if done(&mut a) && done(&mut b) {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    for (name, child) in [("a", a), ("b", b)] {
        let run = wait(child);
        run.expect_code(0);
        assert_eq!(
            run.json_lines()[0]["body"],
            "to everyone",
            "consumer {name}"
        );
    }
    let _ = kombu(&["queue", "delete", "--url", url, &qa.queue]);
}

/// `kombu publish --delay 1.5`: not delivered before 1.5 s, soon after;
/// refused (nothing stored) where the transport has no delayed delivery.
fn delayed_publish(url: &str) {
    let q = scratch(url, "cli-delay");
    let delayed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            kombu::install_default_transports();
            let conn = kombu::Connection::new(url).unwrap();
            let caps = conn.capabilities().await.unwrap();
            let _ = conn.close().await;
            caps.delayed_delivery
        });
    let started = std::time::Instant::now();
    let published = kombu(&[
        "publish", "--url", url, "--queue", &q.queue, "--delay", "1.5", "later",
    ]);
    if !delayed {
        assert_ne!(published.code, Some(0), "a delayed publish must be refused");
        assert_eq!(queue_size(url, &q.queue), 0, "nothing stored");
        return;
    }
    published.expect_code(0);
    let consumed = kombu(&[
        "consume",
        "--url",
        url,
        "--queue",
        &q.queue,
        "--count",
        "1",
        "--timeout",
        "20",
    ]);
    consumed.expect_code(0);
    let took = started.elapsed();
    assert_eq!(consumed.json_lines()[0]["body"], "later");
    assert!(
        took >= Duration::from_millis(1500),
        "delivered after {took:?}, before its delay"
    );
}

fn run_all(transport: &str) {
    run_all_on(transport, transport);
}

/// Every round trip on the test service `service`, whose URLs use `scheme`.
fn run_all_on(service: &str, scheme: &str) {
    let Some(url) = broker_url(service, scheme) else {
        return;
    };
    json_bodies_headers_and_properties(&url);
    text_bytes_and_compressed_bodies(&url);
    topic_exchange_routing(&url);
    timeout_with_fewer_messages(&url);
    requeue_peeks(&url);
    count_takes_no_more_than_asked(&url);
    #[cfg(unix)]
    ctrl_c_returns_unacked_messages(&url);
    quarantine_show_requeue_purge(&url);
    fanout_to_two_consumer_processes(&url);
    delayed_publish(&url);
    let run = kombu(&[
        "bench",
        "--url",
        &url,
        "--messages",
        "300",
        "--rtt-samples",
        "20",
        "--json",
    ]);
    run.expect_code(0);
    let report = &run.json_lines()[0];
    assert_eq!(report["messages"], 300);
    assert!(report["consume_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn redis_round_trips() {
    run_all("redis");
}

#[test]
fn amqp_round_trips() {
    run_all("amqp");
}

/// `sentinel://`: three sentinels watching a master and its replica.
#[test]
fn sentinel_round_trips() {
    run_all_on("redis-sentinel", "sentinel");
}

/// `rediscluster://`: three masters and three replicas.
#[test]
fn rediscluster_round_trips() {
    run_all_on("redis-cluster", "rediscluster");
}

/// A failover list of the three nodes of a RabbitMQ cluster.
#[test]
fn amqp_cluster_round_trips() {
    run_all_on("rabbitmq-cluster", "amqp");
}

#[test]
fn beanstalk_round_trips() {
    run_all("beanstalk");
}

#[test]
fn sqs_round_trips() {
    run_all("sqs");
}

#[test]
fn mongodb_round_trips() {
    run_all("mongodb");
}

#[test]
fn couchdb_round_trips() {
    run_all("couchdb");
}

#[test]
fn nats_round_trips() {
    run_all("nats");
}
