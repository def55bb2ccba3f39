//! The bytes in Redis after a Rust publish are the bytes Python kombu 5.7
//! writes for the same message (only the uuid delivery tag differs).

mod common;

use common::{base_url, connect, prefix, python};
use kombu_core::{Exchange, Producer, PublishOptions, Queue};
use kombu_testkit::unique;
use serde_json::json;

async fn raw(conn: &mut redis::aio::MultiplexedConnection, cmd: &str, key: &str) -> Vec<Vec<u8>> {
    redis::cmd(cmd)
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap()
}

fn without_tag(raw: &[u8]) -> String {
    let text = String::from_utf8(raw.to_vec()).unwrap();
    let at = text.find("\"delivery_tag\": \"").expect("a delivery tag") + 17;
    format!("{}<tag>{}", &text[..at], &text[at + 36..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_writes_the_bytes_kombu_writes() {
    let Some(url) = base_url() else { return };
    let Some(_) = kombu_testkit::python_peer() else {
        return;
    };
    let prefix = prefix("wire");
    let (qr, qp, ex) = (unique("wire-rs"), unique("wire-py"), unique("wire-ex"));
    let conn = connect(&url, &prefix, &[]);
    let direct = Exchange::direct(&ex);
    let topic = Exchange::topic(format!("{ex}-t"));
    let p = Producer::new(&conn);
    // Rust: API priority 0 is kombu's 9; Python: priority 9.
    p.publish(
        json!({"hello": "world", "n": 1}),
        PublishOptions::new()
            .exchange(direct.clone())
            .routing_key("rk")
            .header("x-origin", "test")
            .declare(Queue::new(&qr).bind(&direct, "rk"))
            .declare(Queue::new(&qr).bind(&topic, "a.#")),
    )
    .await
    .unwrap();
    python(
        r#"
with conn() as c:
    ex = Exchange(os.environ['EX'], 'direct')
    tex = Exchange(os.environ['EX'] + '-t', 'topic')
    Queue(os.environ['QP'], ex, 'rk')(c.default_channel).declare()
    Queue(os.environ['QP'], tex, 'a.#')(c.default_channel).declare()
    Producer(c, exchange=ex).publish({'hello': 'world', 'n': 1}, routing_key='rk',
                                     headers={'x-origin': 'test'}, priority=9)
print(json.dumps('ok'))
"#,
        &url,
        &prefix,
        &[("EX", &ex), ("QP", &qp)],
    )
    .await
    .unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut r = client.get_multiplexed_async_connection().await.unwrap();
    // The message: same list (`q\x06\x169`), same bytes.
    let rust = raw(&mut r, "LRANGE", &format!("{prefix}{qr}\x06\x169")).await;
    let py = raw(&mut r, "LRANGE", &format!("{prefix}{qp}\x06\x169")).await;
    // qr holds Python's copy (newest, on the left) and Rust's message.
    assert_eq!(rust.len(), 2, "both messages are in qr's 9 list");
    assert_eq!(py.len(), 1, "Python's message is in qp's 9 list");
    assert_eq!(
        rust[0], py[0],
        "one Python message, one delivery tag, two queues"
    );
    assert_eq!(without_tag(&rust[1]), without_tag(&py[0]));
    assert_eq!(
        without_tag(&rust[1]),
        "{\"body\": \"eyJoZWxsbyI6ICJ3b3JsZCIsICJuIjogMX0=\", \"content-encoding\": \"utf-8\", \
         \"content-type\": \"application/json\", \"headers\": {\"x-origin\": \"test\"}, \
         \"properties\": {\"delivery_mode\": 2, \"delivery_info\": {\"exchange\": \"EX\", \
         \"routing_key\": \"rk\"}, \"priority\": 9, \"body_encoding\": \"base64\", \
         \"delivery_tag\": \"<tag>\"}}"
            .replace("EX", &ex)
    );
    // The binding tables: the same members, in both sets.
    for table in ["_kombu.binding.", "_kombu.binding_permanent."] {
        for (exchange, member) in [
            (ex.clone(), "rk\x06\x16\x06\x16"),
            (format!("{ex}-t"), "a.#\x06\x16^a\\..*?$\x06\x16"),
        ] {
            let members: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
                .arg(format!("{prefix}{table}{exchange}"))
                .query_async(&mut r)
                .await
                .unwrap();
            let mut members: Vec<String> = members
                .into_iter()
                .map(|m| String::from_utf8(m).unwrap())
                .collect();
            members.sort();
            let mut expected = vec![format!("{member}{qr}"), format!("{member}{qp}")];
            expected.sort();
            assert_eq!(members, expected, "{table}{exchange}");
        }
    }
    // A fetched message is in kombu's unacked structures, restorable by kombu.
    let channel = conn.channel().await.unwrap();
    let delivery = channel
        .basic_get(&qr, false)
        .await
        .unwrap()
        .expect("a message");
    let second = channel
        .basic_get(&qr, true)
        .await
        .unwrap()
        .expect("Python's copy");
    assert_eq!(second.message.headers["x-origin"], json!("test"));
    let tags: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{prefix}unacked_index"))
        .arg(0)
        .arg(-1)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(tags.len(), 1);
    let entry: Vec<u8> = redis::cmd("HGET")
        .arg(format!("{prefix}unacked"))
        .arg(&tags[0])
        .query_async(&mut r)
        .await
        .unwrap();
    let entry = String::from_utf8(entry).unwrap();
    assert!(entry.starts_with("[{\"body\": "), "{entry}");
    assert!(entry.ends_with(&format!("}}, \"\", \"{qr}\"]")), "{entry}");
    channel
        .basic_ack(delivery.delivery_tag, false)
        .await
        .unwrap();
    let left: u64 = redis::cmd("HLEN")
        .arg(format!("{prefix}unacked"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(left, 0, "ack removes the unacked entry");
    for q in [&qr, &qp] {
        channel.queue_delete(q).await.unwrap();
    }
    channel.exchange_delete(&ex).await.unwrap();
    channel.exchange_delete(&format!("{ex}-t")).await.unwrap();
    conn.close().await.unwrap();
}
