//! A URL's login is used as written, on the first attempt: a Redis ACL user
//! made by the test logs in through `redis://USER:PW@host:port/0` (no
//! anonymous attempt first, no fallback), a wrong password is an `Auth`
//! error that names no password and is sent once, a user named `guest` is
//! that user (not "no login"), a user without a password is a `nopass`
//! login, and a URL without a login sends none.
//!
//! The server's own records are the witnesses: `ACL LOG` lists every
//! refused AUTH by user name, `CLIENT LIST` the user each connection is
//! logged in as. Every ACL user is removed at the end, also when a check
//! fails.

use std::sync::Arc;
use std::time::Duration;

use kombu_core::{BrokerUrl, Connection, ErrorKind, Registry};
use kombu_testkit::unique;
use redis::aio::MultiplexedConnection;

const LIMIT: Duration = Duration::from_secs(20);

fn registry() -> Arc<Registry> {
    let mut registry = Registry::new();
    kombu_redis::register(&mut registry);
    Arc::new(registry)
}

/// `host:port` of the test server.
fn host_port(url: &str) -> String {
    let parsed = BrokerUrl::parse(url).unwrap();
    format!(
        "{}:{}",
        parsed.hostname().unwrap_or("localhost"),
        parsed.port().unwrap_or(6379)
    )
}

/// A raw (default user) connection to the test server.
async fn admin(url: &str) -> MultiplexedConnection {
    redis::Client::open(format!("redis://{}/", host_port(url)))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("a raw connection to the test server")
}

/// An ACL user made for one test; removed when dropped (with a blocking
/// connection of its own, so a failed check still cleans up).
struct AclUser {
    name: String,
    /// The password this test added, for a user that may be shared
    /// (`guest`): dropping removes this password only, and the user once it
    /// has none left.
    shared_password: Option<String>,
    admin: String,
}

impl AclUser {
    /// `ACL SETUSER <name> on <rules...> ~* &* +@all`.
    async fn create(url: &str, name: &str, rules: &[&str]) -> AclUser {
        let mut raw = admin(url).await;
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(name).arg("on");
        for rule in rules {
            cmd.arg(*rule);
        }
        cmd.arg("~*").arg("&*").arg("+@all");
        let () = cmd.query_async(&mut raw).await.expect("ACL SETUSER");
        AclUser {
            name: name.to_owned(),
            shared_password: None,
            admin: format!("redis://{}/", host_port(url)),
        }
    }
}

impl Drop for AclUser {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.admin.as_str()) else {
            return;
        };
        let Ok(mut raw) = client.get_connection_with_timeout(Duration::from_secs(5)) else {
            eprintln!("could not remove ACL user {}", self.name);
            return;
        };
        let _ = raw.set_read_timeout(Some(Duration::from_secs(5)));
        if let Some(password) = &self.shared_password {
            let _: redis::RedisResult<()> = redis::cmd("ACL")
                .arg("SETUSER")
                .arg(&self.name)
                .arg(format!("<{password}"))
                .query(&mut raw);
            let rules: redis::RedisResult<Vec<String>> =
                redis::cmd("ACL").arg("LIST").query(&mut raw);
            let prefix = format!("user {} ", self.name);
            let others = rules.unwrap_or_default().iter().any(|rule| {
                rule.starts_with(&prefix) && rule.split(' ').any(|part| part.starts_with('#'))
            });
            if others {
                return; // another run's password: its user still
            }
        }
        let _: redis::RedisResult<i64> = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&self.name)
            .query(&mut raw);
    }
}

/// `redis://user:password@host:port/0` for the test server.
fn login_url(url: &str, user: &str, password: Option<&str>) -> String {
    match password {
        Some(password) => format!("redis://{user}:{password}@{}/0", host_port(url)),
        None => format!("redis://{user}@{}/0", host_port(url)),
    }
}

/// Refused logins of `user` the server recorded (`ACL LOG`, reason auth).
async fn refused_logins(raw: &mut MultiplexedConnection, user: &str) -> i64 {
    let entries: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(raw)
        .await
        .expect("ACL LOG");
    let text = |value: Option<&redis::Value>| -> String {
        value
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            .unwrap_or_default()
    };
    entries
        .iter()
        .filter(|e| text(e.get("username")) == user && text(e.get("reason")) == "auth")
        .map(|e| {
            e.get("count")
                .and_then(|v| redis::from_redis_value_ref::<i64>(v).ok())
                .unwrap_or(1)
        })
        .sum()
}

/// Connections logged in as `user` (`CLIENT LIST`).
async fn clients_of(raw: &mut MultiplexedConnection, user: &str) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(raw)
        .await
        .expect("CLIENT LIST");
    let field = format!(" user={user} ");
    list.lines()
        .filter(|line| format!("{line} ").contains(&field))
        .count()
}

/// Publish and consume one message on `conn`.
async fn round_trip(conn: &Connection, body: &str) {
    let queue = conn.simple_queue(&unique("acl-q"));
    queue.put(body).await.unwrap();
    let message = queue
        .get(Some(Duration::from_secs(5)))
        .await
        .unwrap()
        .expect("the message just published");
    assert_eq!(message.body(), body.as_bytes());
    message.ack().await.unwrap();
}

#[tokio::test]
async fn an_acl_user_logs_in_on_the_first_attempt() {
    let Some(url) = kombu_testkit::test_url("redis") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let mut raw = admin(&url).await;
        let password = "Corr3ct-h0rse-battery";
        let user = AclUser::create(&url, &unique("acl-user"), &[&format!(">{password}")]).await;

        let conn =
            Connection::with_registry(&login_url(&url, &user.name, Some(password)), registry())
                .unwrap();
        conn.connect().await.unwrap();
        assert!(
            clients_of(&mut raw, &user.name).await >= 1,
            "the connection is logged in as {}",
            user.name
        );
        round_trip(&conn, "as the ACL user").await;
        assert_eq!(
            refused_logins(&mut raw, &user.name).await,
            0,
            "no refused AUTH before the login that worked"
        );
        conn.close().await.unwrap();
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_wrong_password_is_an_auth_error_naming_no_password_sent_once() {
    let Some(url) = kombu_testkit::test_url("redis") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let mut raw = admin(&url).await;
        let password = "Corr3ct-h0rse-battery";
        let wrong = "Wr0ng-pa55word-xyz";
        let user = AclUser::create(&url, &unique("acl-user"), &[&format!(">{password}")]).await;

        let bad = Connection::with_registry(&login_url(&url, &user.name, Some(wrong)), registry())
            .unwrap();
        let err = bad.connect().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
        assert!(
            err.to_string().contains(&user.name),
            "names the user: {err}"
        );
        for text in [
            err.to_string(),
            format!("{err:?}"),
            format!("{bad:?}"),
            bad.as_uri(),
        ] {
            assert!(!text.contains(wrong), "the password shows: {text}");
        }
        assert_eq!(
            refused_logins(&mut raw, &user.name).await,
            1,
            "the wrong password is sent once (no retries, no fallback)"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_user_named_guest_is_that_user() {
    let Some(url) = kombu_testkit::test_url("redis") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let mut raw = admin(&url).await;
        let password = unique("guest-pw");
        let made = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("guest")
            .arg("on")
            .arg(format!(">{password}"))
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .query_async::<()>(&mut raw)
            .await;
        if let Err(err) = made {
            return eprintln!(
                "SKIP a_user_named_guest_is_that_user: the server refused ACL user guest: {err}"
            );
        }
        let _guest = AclUser {
            name: "guest".into(),
            shared_password: Some(password.clone()),
            admin: format!("redis://{}/", host_port(&url)),
        };
        let before = clients_of(&mut raw, "guest").await;
        let conn =
            Connection::with_registry(&login_url(&url, "guest", Some(&password)), registry())
                .unwrap();
        conn.connect().await.unwrap();
        assert!(
            clients_of(&mut raw, "guest").await > before,
            "logged in as the ACL user guest, not as the default user"
        );
        round_trip(&conn, "as guest").await;
        conn.close().await.unwrap();
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_user_without_a_password_is_a_nopass_login() {
    let Some(url) = kombu_testkit::test_url("redis") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let mut raw = admin(&url).await;
        let user = AclUser::create(&url, &unique("acl-nopass"), &["nopass"]).await;
        let conn =
            Connection::with_registry(&login_url(&url, &user.name, None), registry()).unwrap();
        conn.connect().await.unwrap();
        assert!(
            clients_of(&mut raw, &user.name).await >= 1,
            "logged in as {}",
            user.name
        );
        round_trip(&conn, "as a nopass user").await;
        conn.close().await.unwrap();
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_url_without_a_login_sends_none() {
    let Some(url) = kombu_testkit::test_url("redis") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let conn = Connection::with_registry(&format!("redis://{}/0", host_port(&url)), registry())
            .unwrap();
        assert_eq!(conn.url().userid(), None);
        assert_eq!(conn.url().password(), None);
        conn.connect().await.unwrap();
        round_trip(&conn, "as the default user").await;
        conn.close().await.unwrap();
    })
    .await
    .expect("bounded");
}
