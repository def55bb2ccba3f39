//! A URL's login is used as written, on the first attempt: a Redis ACL user
//! made by the test logs in (no anonymous attempt first), a wrong password
//! is an `Auth` error that names no password, and a URL without a login
//! sends none.

use std::sync::Arc;
use std::time::Duration;

use kombu_core::{BrokerUrl, Connection, ErrorKind, Registry};

const LIMIT: Duration = Duration::from_secs(20);

fn registry() -> Arc<Registry> {
    let mut registry = Registry::new();
    kombu_redis::register(&mut registry);
    Arc::new(registry)
}

async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    let parsed = BrokerUrl::parse(url).unwrap();
    let address = format!(
        "redis://{}:{}/",
        parsed.hostname().unwrap_or("localhost"),
        parsed.port().unwrap_or(6379)
    );
    redis::Client::open(address)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("a raw connection to the test server")
}

/// `url` with `user:password@` in front of its host.
fn with_login(url: &str, user: &str, password: &str) -> String {
    let parsed = BrokerUrl::parse(url).unwrap();
    format!(
        "redis://{user}:{password}@{}:{}/0",
        parsed.hostname().unwrap_or("localhost"),
        parsed.port().unwrap_or(6379)
    )
}

#[tokio::test]
async fn an_acl_user_logs_in_first_time_and_a_wrong_password_is_an_auth_error() {
    let Some(url) = kombu_testkit::test_url("redis") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let mut raw = admin(&url).await;
        let user = kombu_testkit::unique("acl-user");
        let password = "Corr3ct-h0rse-battery";
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&user)
            .arg("on")
            .arg(format!(">{password}"))
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .query_async(&mut raw)
            .await
            .expect("ACL SETUSER");
        let failures_before = auth_failures(&mut raw).await;

        let conn =
            Connection::with_registry(&with_login(&url, &user, password), registry()).unwrap();
        let queue = conn.simple_queue(&kombu_testkit::unique("acl-q"));
        queue.put("as alice would").await.unwrap();
        let message = queue
            .get(Some(Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(message.body(), b"as alice would");
        message.ack().await.unwrap();
        assert_eq!(
            auth_failures(&mut raw).await,
            failures_before,
            "the login worked on the first attempt (no refused AUTH before it)"
        );
        conn.close().await.unwrap();

        let wrong = "Wr0ng-pa55word-xyz";
        let bad = Connection::with_registry(&with_login(&url, &user, wrong), registry()).unwrap();
        let err = bad.connect().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
        for text in [
            err.to_string(),
            format!("{err:?}"),
            format!("{bad:?}"),
            bad.as_uri(),
        ] {
            assert!(!text.contains(wrong), "the password shows: {text}");
        }

        let _: i64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&user)
            .query_async(&mut raw)
            .await
            .expect("ACL DELUSER");
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_url_without_a_login_sends_none() {
    let Some(url) = kombu_testkit::test_url("redis") else {
        return;
    };
    let conn = Connection::with_registry(&url, registry()).unwrap();
    assert_eq!(conn.url().userid(), None);
    assert_eq!(conn.url().password(), None);
    tokio::time::timeout(LIMIT, conn.connect())
        .await
        .expect("bounded")
        .unwrap();
}

/// Refused logins the server has counted (`INFO stats`: `acl_access_denied_auth`).
async fn auth_failures(raw: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(raw)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("acl_access_denied_auth:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}
