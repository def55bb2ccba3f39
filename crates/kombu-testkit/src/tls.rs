//! The TLS suite every transport with a TLS test service runs
//! ([`tls_tests!`](crate::tls_tests)): against the `<scheme>`,
//! `<scheme>-mtls` and `<scheme>-expired` services of `cargo xtask services
//! up rabbitmq-tls redis-tls` (xtask/src/tls.rs):
//!
//! * `KOMBU_TEST_<SCHEME>_URL`: the good certificate, no client certificate
//!   needed; the same server answers on 127.0.0.2, a name its certificate
//!   does not list;
//! * `KOMBU_TEST_<SCHEME>_MTLS_URL`: requires a client certificate
//!   (`KOMBU_TEST_TLS_CLIENT_CERT` / `KOMBU_TEST_TLS_CLIENT_KEY`);
//! * `KOMBU_TEST_<SCHEME>_EXPIRED_URL`: presents an expired certificate;
//! * `KOMBU_TEST_TLS_OTHER_CA`: a CA that signed none of them.
//!
//! Every refusal is an `Auth` error saying which check failed; CERT_NONE
//! connects with a warning; and with every log line captured at trace
//! level, no password and no key material shows in a log line, a `Debug`
//! or an error.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use kombu_core::{BrokerUrl, Connection, Error, ErrorKind};

use crate::{require_env, test_url, unique, with_query};

/// Each connect, round trip or refusal is over within this.
pub const LIMIT: Duration = Duration::from_secs(20);

/// A future borrowing what it was made from.
pub type Borrowed<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// What a transport gives the suite.
pub struct TlsSuite {
    /// The services' prefix: `amqps` for KOMBU_TEST_AMQPS_URL and its
    /// `amqps-mtls`, `amqps-expired` siblings.
    pub service: &'static str,
    /// A connection to a URL, with the transport registered.
    pub connect: fn(&str) -> Connection,
    /// What else the transport shows of a connection to the URL (the
    /// `Debug` of its parsed settings or of its transport): checked for
    /// the password and key material with the rest.
    pub describe: for<'a> fn(&'a str, &'a Connection) -> Borrowed<'a, String>,
}

impl TlsSuite {
    fn url(&self, which: &str) -> Option<String> {
        test_url(&format!("{}{which}", self.service))
    }
}

/// Every log line of this process, from any thread, at trace level (also
/// the `log` records of the client libraries and rustls).
pub mod capture {
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

    /// Install the capturing subscriber (once per process).
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

/// `url` with the CA of its query replaced by `ca`.
pub fn with_ca(url: &str, ca: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut parts: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("ssl_ca_certs="))
        .map(str::to_owned)
        .collect();
    parts.push(format!("ssl_ca_certs={ca}"));
    format!("{base}?{}", parts.join("&"))
}

/// `url` with the test client certificate and key added.
pub fn with_client_certificate(url: &str) -> Option<String> {
    let cert = require_env("KOMBU_TEST_TLS_CLIENT_CERT")?;
    let key = require_env("KOMBU_TEST_TLS_CLIENT_KEY")?;
    Some(with_query(
        url,
        &format!("ssl_certfile={cert}&ssl_keyfile={key}"),
    ))
}

/// Publish and consume one message on `conn`.
pub async fn round_trip(conn: &Connection) {
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
async fn refusal(suite: &TlsSuite, url: &str) -> Error {
    let conn = (suite.connect)(url);
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

/// The server's certificate verified against the CA in the URL's query.
pub async fn the_good_ca_connects(suite: &TlsSuite) {
    capture::install();
    let Some(url) = suite.url("") else { return };
    let conn = (suite.connect)(&url);
    round_trip(&conn).await;
    conn.close().await.expect("close");
}

/// A CA that did not sign the server's certificate.
pub async fn a_wrong_ca_is_refused_as_an_unknown_issuer(suite: &TlsSuite) {
    capture::install();
    let (Some(url), Some(other)) = (suite.url(""), require_env("KOMBU_TEST_TLS_OTHER_CA")) else {
        return;
    };
    let err = refusal(suite, &with_ca(&url, &other)).await;
    assert_refused(&err, "not signed by a trusted CA");
}

/// A server certificate past its end.
pub async fn an_expired_certificate_is_refused_as_expired(suite: &TlsSuite) {
    capture::install();
    let Some(url) = suite.url("-expired") else {
        return;
    };
    let err = refusal(suite, &url).await;
    assert_refused(&err, "has expired");
}

/// A name the server's certificate does not list (127.0.0.2).
pub async fn a_wrong_hostname_is_refused_naming_the_host(suite: &TlsSuite) {
    capture::install();
    let Some(url) = suite.url("") else { return };
    // The good server listens on 127.0.0.2 too; its certificate names
    // localhost and 127.0.0.1 only.
    let err = refusal(suite, &url.replace("127.0.0.1", "127.0.0.2")).await;
    assert_refused(&err, "does not name the host \"127.0.0.2\"");
}

/// `ssl_cert_reqs=CERT_NONE` connects to the expired server, with no CA,
/// and logs a warning naming it.
pub async fn cert_none_connects_and_warns(suite: &TlsSuite) {
    capture::install();
    let Some(url) = suite.url("-expired") else {
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
    let conn = (suite.connect)(&format!("{base}?ssl_cert_reqs=CERT_NONE"));
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

/// A server that requires a client certificate takes ours.
pub async fn mutual_tls_works_with_a_client_certificate(suite: &TlsSuite) {
    capture::install();
    let Some(url) = suite.url("-mtls") else {
        return;
    };
    let Some(url) = with_client_certificate(&url) else {
        return;
    };
    let conn = (suite.connect)(&url);
    round_trip(&conn).await;
    conn.close().await.expect("close");
}

/// A server that requires a client certificate refuses a client without.
pub async fn mutual_tls_is_refused_without_a_client_certificate(suite: &TlsSuite) {
    capture::install();
    let Some(url) = suite.url("-mtls") else {
        return;
    };
    let err = refusal(suite, &url).await;
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

/// Connections, refusals and a wrong password over TLS, every log line at
/// trace level captured: neither the password nor the client key's PEM
/// body shows in a log, a `Debug` or an error.
pub async fn no_password_or_key_material_in_logs_debug_or_errors(suite: &TlsSuite) {
    capture::install();
    let (Some(url), Some(mtls), Some(expired)) =
        (suite.url(""), suite.url("-mtls"), suite.url("-expired"))
    else {
        return;
    };
    let Some(key) = key_material() else { return };
    let Some(mtls_with_key) = with_client_certificate(&mtls) else {
        return;
    };
    let password = BrokerUrl::parse(&url)
        .unwrap()
        .password()
        .expect("the TLS URL has a password")
        .to_owned();

    let mut shown = Vec::new();
    for good in [&url, &mtls_with_key] {
        let conn = (suite.connect)(good);
        round_trip(&conn).await;
        shown.push(format!("{conn:?}"));
        shown.push(format!("{:?}", conn.options()));
        shown.push((suite.describe)(good, &conn).await);
        conn.close().await.expect("close");
    }
    for bad in [
        mtls.clone(),
        expired.clone(),
        url.replace("127.0.0.1", "127.0.0.2"),
    ] {
        let err = refusal(suite, &bad).await;
        shown.push(format!("{err}"));
        shown.push(format!("{err:?}"));
        shown.push(format!("{err:#}"));
    }
    // A wrong password over TLS, too.
    let err = refusal(suite, &url.replace(&password, "not-the-password")).await;
    shown.push(format!("{err} {err:?}"));

    let logs = capture::text();
    // The capture works: each good connection logged its (masked) URL.
    // How much more there is depends on the build (the client libraries'
    // `log` records come only where their logging feature is on).
    assert!(
        logs.matches("connected url=").count() >= 2,
        "the connections' log lines were captured: {logs}"
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

/// One `#[tokio::test]` per check of the TLS suite, for the [`TlsSuite`]
/// that `$suite` (a function) returns:
///
/// ```ignore
/// fn suite() -> kombu_testkit::tls::TlsSuite { ... }
/// kombu_testkit::tls_tests!(suite);
/// ```
#[macro_export]
macro_rules! tls_tests {
    ($suite:path) => {
        $crate::tls_tests!(@each $suite,
            the_good_ca_connects,
            a_wrong_ca_is_refused_as_an_unknown_issuer,
            an_expired_certificate_is_refused_as_expired,
            a_wrong_hostname_is_refused_naming_the_host,
            cert_none_connects_and_warns,
            mutual_tls_works_with_a_client_certificate,
            mutual_tls_is_refused_without_a_client_certificate,
            no_password_or_key_material_in_logs_debug_or_errors
        );
    };
    (@each $suite:path, $($check:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                $crate::tls::$check(&$suite()).await;
            }
        )+
    };
}
