//! Helpers shared by the Redis integration tests: connections isolated by a
//! `global_keyprefix` of their own (so a short visibility_timeout in one test
//! never restores another test's messages), and the Python kombu peer.

#![allow(dead_code)]

use std::sync::Arc;

use kombu_core::{Connection, ConnectionOptions, Registry, TransportOptions};
use serde_json::Value;

/// The test server's URL, or `None` (skip).
pub fn base_url() -> Option<String> {
    kombu_testkit::test_url("redis")
}

/// A fresh key prefix for one test.
pub fn prefix(name: &str) -> String {
    format!(
        "{}:",
        kombu_testkit::unique(&format!("kombu-rs-test-{name}"))
    )
}

/// A Rust connection to `url` under `prefix`, with extra transport options.
pub fn connect(url: &str, prefix: &str, extra: &[(&str, Value)]) -> Connection {
    let mut options = TransportOptions::new().set("global_keyprefix", prefix);
    for (key, value) in extra {
        options.insert(*key, value.clone());
    }
    let mut registry = Registry::new();
    kombu_redis::register(&mut registry);
    Connection::with_registry_options(
        url,
        ConnectionOptions::new().transport_options(options),
        Arc::new(registry),
    )
    .expect("redis URL")
}

/// Python helpers every peer script starts with.
pub const PY_PRELUDE: &str = r#"
import os, json, sys, time, socket
from kombu import Connection, Exchange, Queue, Producer, Consumer
URL = os.environ['URL']
TO = {'global_keyprefix': os.environ['PREFIX'],
      'visibility_timeout': float(os.environ.get('VT', '3600'))}
if os.environ.get('MASTER_NAME'):
    TO['master_name'] = os.environ['MASTER_NAME']

def conn():
    return Connection(URL, transport_options=TO)

def describe(body, message):
    if isinstance(body, (bytes, bytearray)):
        body = {'hex': bytes(body).hex()}
    return {'body': body,
            'priority': message.properties.get('priority'),
            'redelivered': bool(message.delivery_info.get('redelivered')),
            'headers': message.headers,
            'content_type': message.content_type}

def drain(queues, n, timeout=20, ack=True, requeue=False):
    got = []
    with conn() as c:
        def cb(body, message):
            got.append(describe(body, message))
            if requeue:
                message.requeue()
            elif ack:
                message.ack()
        accept = ['json', 'msgpack', 'yaml', 'application/data', 'text/plain']
        with Consumer(c, queues, callbacks=[cb], accept=accept, prefetch_count=1):
            deadline = time.time() + timeout
            while len(got) < n and time.time() < deadline:
                try:
                    c.drain_events(timeout=0.5)
                except socket.timeout:
                    pass
    return got
"#;

/// Run a Python peer script; `None` when the peer is not configured.
pub async fn python(script: &str, url: &str, prefix: &str, env: &[(&str, &str)]) -> Option<String> {
    let py = kombu_testkit::python_peer()?;
    let mut all = vec![("URL", url), ("PREFIX", prefix)];
    all.extend_from_slice(env);
    let full = format!("{PY_PRELUDE}\n{script}");
    Some(
        kombu_testkit::run_python(&py, &full, &all)
            .await
            .unwrap_or_else(|e| panic!("python peer: {e}")),
    )
}

/// The last line of the peer's output, as JSON.
pub fn last_json(output: &str) -> Value {
    let line = output.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("peer printed {output:?}: {e}"))
}
