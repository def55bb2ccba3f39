//! `rediss://` end to end against the redis-tls service (`cargo xtask
//! services up redis-tls`): three redis-servers with a throwaway CA's
//! certificates (see xtask/src/tls.rs).
//!
//! * KOMBU_TEST_REDISS_URL: the good certificate, no client certificate
//!   needed; the same server answers on 127.0.0.2, a name its certificate
//!   does not list;
//! * KOMBU_TEST_REDISS_MTLS_URL: requires a client certificate
//!   (KOMBU_TEST_TLS_CLIENT_CERT / KOMBU_TEST_TLS_CLIENT_KEY);
//! * KOMBU_TEST_REDISS_EXPIRED_URL: presents an expired certificate;
//! * KOMBU_TEST_TLS_OTHER_CA: a CA that signed none of them.
//!
//! Every refusal is an `Auth` error saying which check failed; CERT_NONE
//! connects with a warning; and with every log line captured at trace
//! level, no password and no key material shows in a log line, a `Debug`
//! or an error. The conformance suite runs once over the TLS URL.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kombu_core::{Connection, Error, ErrorKind, Registry};
use kombu_testkit::{require_env, test_url, unique};

/// Each connect, round trip or refusal is over within this.
const LIMIT: Duration = Duration::from_secs(20);

/// Every log line of this test binary, from any thread, at trace level.
mod capture {
    use super::*;

    static LINES: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    struct Sink;

    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            LINES
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Install the capturing subscriber (once per test binary; also the
    /// `log` records of redis-rs and rustls).
    pub fn install() {
        static ONCE: OnceLock<()> = OnceLock::new();
        ONCE.get_or_init(|| {
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(|| Sink)
                .try_init()
                .expect("the capturing subscriber is the first");
        });
    }

    /// Everything logged so far.
    pub fn text() -> String {
        String::from_utf8_lossy(&LINES.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

fn registry() -> Arc<Registry> {
    let mut registry = Registry::new();
    kombu_redis::register(&mut registry);
    Arc::new(registry)
}

fn connection(url: &str) -> Connection {
    Connection::with_registry(url, registry()).expect("a usable rediss:// URL")
}

/// `url` with `extra` added to its query.
fn with_query(url: &str, extra: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{extra}")
}

/// `url` with the CA of its query replaced by `ca`.
fn with_ca(url: &str, ca: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut parts: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("ssl_ca_certs="))
        .map(str::to_owned)
        .collect();
    parts.push(format!("ssl_ca_certs={ca}"));
    format!("{base}?{}", parts.join("&"))
}

/// `url` with its client certificate and key added.
fn with_client_certificate(url: &str) -> Option<String> {
    let cert = require_env("KOMBU_TEST_TLS_CLIENT_CERT")?;
    let key = require_env("KOMBU_TEST_TLS_CLIENT_KEY")?;
    Some(with_query(
        url,
        &format!("ssl_certfile={cert}&ssl_keyfile={key}"),
    ))
}

/// Publish and consume one message on `conn`.
async fn round_trip(conn: &Connection) {
    tokio::time::timeout(LIMIT, async {
        let queue = conn.simple_queue(&unique("tls-q"));
        queue.put("over TLS").await.expect("put over TLS");
        let message = queue
            .get(Some(Duration::from_secs(5)))
            .await
            .expect("get over TLS")
            .expect("the message just put");
        assert_eq!(message.body(), b"over TLS");
        message.ack().await.expect("ack over TLS");
    })
    .await
    .expect("a round trip over TLS within 20 s");
}

/// The error of connecting to `url` (which must be refused).
async fn refusal(url: &str) -> Error {
    let conn = connection(url);
    let outcome = tokio::time::timeout(LIMIT, conn.connect())
        .await
        .expect("the refusal within 20 s");
    match outcome {
        Ok(()) => panic!("connected to {url}, but it must be refused"),
        Err(err) => err,
    }
}

/// Assert `err` is a TLS refusal whose message contains `says`.
fn assert_refused(err: &Error, says: &str) {
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    let text = err.to_string();
    assert!(text.contains("TLS") && text.contains(says), "{text}");
    eprintln!("refused as expected: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_good_ca_connects() {
    capture::install();
    let Some(url) = test_url("rediss") else {
        return;
    };
    let conn = connection(&url);
    round_trip(&conn).await;
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_refused_as_an_unknown_issuer() {
    capture::install();
    let (Some(url), Some(other)) = (test_url("rediss"), require_env("KOMBU_TEST_TLS_OTHER_CA"))
    else {
        return;
    };
    let err = refusal(&with_ca(&url, &other)).await;
    assert_refused(&err, "not signed by a trusted CA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused_as_expired() {
    capture::install();
    let Some(url) = test_url("rediss-expired") else {
        return;
    };
    let err = refusal(&url).await;
    assert_refused(&err, "has expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_hostname_is_refused_naming_the_host() {
    capture::install();
    let Some(url) = test_url("rediss") else {
        return;
    };
    // The good server listens on 127.0.0.2 too; its certificate names
    // localhost and 127.0.0.1 only.
    let err = refusal(&url.replace("127.0.0.1", "127.0.0.2")).await;
    assert_refused(&err, "does not name the host \"127.0.0.2\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_none_connects_and_warns() {
    capture::install();
    let Some(url) = test_url("rediss-expired") else {
        return;
    };
    // No CA, and an expired certificate: only CERT_NONE lets it through.
    let (base, _) = url.split_once('?').unwrap_or((&url, ""));
    let port = base
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
        .to_owned();
    let conn = connection(&format!("{base}?ssl_cert_reqs=CERT_NONE"));
    round_trip(&conn).await;
    conn.close().await.expect("close");
    let warned = capture::text().lines().any(|line| {
        line.contains("WARN")
            && line.contains("without verifying")
            && line.contains(&format!("127.0.0.1:{port}"))
    });
    assert!(
        warned,
        "a WARN line about CERT_NONE naming 127.0.0.1:{port}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_works_with_a_client_certificate() {
    capture::install();
    let Some(url) = test_url("rediss-mtls") else {
        return;
    };
    let Some(url) = with_client_certificate(&url) else {
        return;
    };
    let conn = connection(&url);
    round_trip(&conn).await;
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_is_refused_without_a_client_certificate() {
    capture::install();
    let Some(url) = test_url("rediss-mtls") else {
        return;
    };
    let err = refusal(&url).await;
    // The server's alert says so (an `Auth` error), unless the reset of
    // the connection beat the alert to the client (TLS 1.3 checks the
    // client certificate after the client's handshake is done): then a
    // retryable error that says what it may be.
    let text = err.to_string();
    if text.contains("closed by the server as it opened") {
        assert!(err.is_connection_error(), "retryable: {text}");
        assert!(text.contains("may require a client certificate"), "{text}");
        eprintln!("refused (reset before the alert): {text}");
    } else {
        assert_refused(&err, "requires a client certificate");
    }
}

/// The base64 lines of the PEM body of the client key (what a leak of the
/// key would show).
fn key_material() -> Option<Vec<String>> {
    let key = require_env("KOMBU_TEST_TLS_CLIENT_KEY")?;
    let pem = std::fs::read_to_string(&key).expect("read the client key");
    Some(
        pem.lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_owned)
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_or_key_material_in_logs_debug_or_errors() {
    capture::install();
    let (Some(url), Some(mtls), Some(expired)) = (
        test_url("rediss"),
        test_url("rediss-mtls"),
        test_url("rediss-expired"),
    ) else {
        return;
    };
    let Some(key) = key_material() else { return };
    let Some(mtls_with_key) = with_client_certificate(&mtls) else {
        return;
    };
    let password = kombu_core::BrokerUrl::parse(&url)
        .unwrap()
        .password()
        .expect("the TLS URL has a password")
        .to_owned();

    let mut shown = Vec::new();
    for good in [&url, &mtls_with_key] {
        let conn = connection(good);
        round_trip(&conn).await;
        shown.push(format!("{conn:?}"));
        shown.push(format!("{:?}", conn.options()));
        let parsed = kombu_core::BrokerUrl::parse(good).unwrap();
        let mut options = conn.options().clone();
        options.apply_query(&parsed).unwrap();
        let config = kombu_redis::RedisConfig::new(&parsed, &options).unwrap();
        shown.push(format!("{config:?}"));
        conn.close().await.expect("close");
    }
    for bad in [
        mtls.clone(),
        expired.clone(),
        url.replace("127.0.0.1", "127.0.0.2"),
    ] {
        let err = refusal(&bad).await;
        shown.push(format!("{err}"));
        shown.push(format!("{err:?}"));
        shown.push(format!("{err:#}"));
    }
    // A wrong password over TLS, too.
    let err = refusal(&url.replace(&password, "not-the-password")).await;
    shown.push(format!("{err} {err:?}"));

    let logs = capture::text();
    assert!(
        logs.lines().count() > 10,
        "trace-level logs were captured ({} lines)",
        logs.lines().count()
    );
    for (what, text) in shown
        .iter()
        .map(|s| ("a Debug or an error", s.as_str()))
        .chain([("the logs", logs.as_str())])
    {
        assert!(
            !text.contains(&password),
            "the password shows in {what}: {text}"
        );
        assert!(!text.contains("PRIVATE KEY"), "a PEM key in {what}");
        for line in &key {
            assert!(!text.contains(line.as_str()), "key material in {what}");
        }
    }
}

/// The conformance suite over `rediss://` (KOMBU_TEST_REDISS_URL).
mod conformance {
    use kombu_testkit::{GarbagePath, HookError};

    kombu_testkit::conformance_tests!(connect, lease: short_lease, garbage: write_garbage);

    fn connect() -> Option<kombu_core::Connection> {
        let url = kombu_testkit::test_url("rediss")?;
        Some(super::connection(&url))
    }

    /// A 2 s lease, restored within half a second of its end.
    fn short_lease() -> Option<kombu_core::Connection> {
        let url = kombu_testkit::test_url("rediss")?;
        Some(super::connection(&super::with_query(
            &url,
            "visibility_timeout=2&unacked_restore_interval=0.5",
        )))
    }

    /// LPUSH over TLS with redis-rs (the CA from the URL's query).
    async fn write_garbage(
        _conn: &kombu_core::Connection,
        queue: &str,
        bytes: &[u8],
    ) -> Result<GarbagePath, HookError> {
        let url = kombu_testkit::test_url("rediss").ok_or("KOMBU_TEST_REDISS_URL")?;
        let (base, query) = url.split_once('?').ok_or("a CA in the URL's query")?;
        let ca = query
            .split('&')
            .find_map(|p| p.strip_prefix("ssl_ca_certs="))
            .ok_or("ssl_ca_certs in the URL")?;
        let client = redis::Client::build_with_tls(
            base,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(ca)?),
            },
        )?;
        let push = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("LPUSH")
                .arg(queue)
                .arg(bytes)
                .query_async::<i64>(&mut conn)
                .await
        };
        tokio::time::timeout(super::LIMIT, push).await??;
        Ok(GarbagePath::Unreadable)
    }
}
