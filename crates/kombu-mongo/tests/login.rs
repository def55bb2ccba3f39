//! Logins: the URL's user and password are used as written, on the first
//! attempt; no login in the URL is no authentication. The test server
//! (SecantusDB) runs without `--auth` but checks every login a client
//! sends, so an anonymous fallback would connect where these tests expect
//! a refusal, and `connectionStatus` says who the connection is.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{Consumer, ErrorKind, Producer, PublishOptions, Queue, TransportOptions};
use kombu_mongo::MongoBackend;
use mongodb::bson::{doc, Bson, Document};
use serde_json::json;

use support::*;

/// `url` with `user:password@` (percent-encoded) in place of any login.
fn with_login(url: &str, user: &str, password: &str) -> String {
    let encode = |text: &str| {
        percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!("{scheme}://{}:{}@{rest}", encode(user), encode(password))
}

/// A user of `database` with `password`, created through a plain client.
async fn create_user(base: &str, database: &str, user: &str, password: &str) {
    raw_database(base, database)
        .await
        .run_command(doc! {
            "createUser": user,
            "pwd": password,
            "roles": [{ "role": "readWrite", "db": database }],
        })
        .await
        .expect("createUser");
}

async fn drop_user_and_database(base: &str, database: &str, user: &str) {
    let db = raw_database(base, database).await;
    let _ = db.run_command(doc! { "dropUser": user }).await;
    drop_database(&db).await;
}

/// The `user@db` names the connection's backend is logged in as.
async fn logged_in_as(conn: &kombu_core::Connection) -> Vec<String> {
    let backend: Arc<MongoBackend> = conn.extension::<MongoBackend>().await.expect("backend");
    let status = backend
        .messages_collection()
        .client()
        .database("admin")
        .run_command(doc! { "connectionStatus": 1 })
        .await
        .expect("connectionStatus");
    let users = status
        .get_document("authInfo")
        .and_then(|info| info.get_array("authenticatedUsers"))
        .cloned()
        .unwrap_or_default();
    users
        .iter()
        .filter_map(Bson::as_document)
        .map(|user: &Document| {
            format!(
                "{}@{}",
                user.get_str("user").unwrap_or("?"),
                user.get_str("db").unwrap_or("?")
            )
        })
        .collect()
}

/// A message there and back over `conn`.
async fn round_trip(conn: &kombu_core::Connection, queue: &str) {
    let channel = conn.channel().await.expect("channel");
    Queue::new(queue)
        .declare(channel.as_ref())
        .await
        .expect("declare");
    Producer::new(conn)
        .publish(json!({"n": 1}), PublishOptions::new().routing_key(queue))
        .await
        .expect("publish");
    let mut consumer = Consumer::builder(conn)
        .queue(Queue::new(queue))
        .build()
        .await
        .expect("consumer");
    let message = tokio::time::timeout(Duration::from_secs(20), consumer.next())
        .await
        .expect("a message within 20 s")
        .expect("stream open")
        .expect("message");
    message.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_created_by_the_test_logs_in_first_time() {
    let Some(base) = base_url() else { return };
    let database = fresh_database("klogin");
    let user = fresh_database("kuser");
    let password = "p@ss/w:rd %s3cret";
    create_user(&base, &database, &user, password).await;
    let url = with_login(&with_database(&base, &database), &user, password);
    let conn = connection(&url, TransportOptions::new());
    let started = Instant::now();
    round_trip(&conn, "loginq").await;
    assert_eq!(logged_in_as(&conn).await, [format!("{user}@{database}")]);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!format!("{conn:?}").contains("s3cret"));
    conn.close().await.expect("close");
    drop_user_and_database(&base, &database, &user).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_is_a_user_like_any_other() {
    // guest/guest is not taken for "no credentials": it logs in as guest.
    let Some(base) = base_url() else { return };
    let database = fresh_database("kguest");
    create_user(&base, &database, "guest", "guest").await;
    let url = with_login(&with_database(&base, &database), "guest", "guest");
    let conn = connection(&url, TransportOptions::new());
    round_trip(&conn, "guestq").await;
    assert_eq!(logged_in_as(&conn).await, [format!("guest@{database}")]);
    conn.close().await.expect("close");
    drop_user_and_database(&base, &database, "guest").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_auth_error_naming_no_password() {
    let Some(base) = base_url() else { return };
    let database = fresh_database("kwrong");
    let user = fresh_database("kuser");
    create_user(&base, &database, &user, "right-password").await;
    let url = with_login(&with_database(&base, &database), &user, "wr0ng-s3cret");
    let conn = connection(&url, TransportOptions::new());
    let started = Instant::now();
    let Err(err) = conn.channel().await else {
        panic!("a wrong password is refused");
    };
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("wr0ng-s3cret"), "{text}");
    assert!(text.contains(&user), "the error names the user: {text}");
    // Refused, not retried until some deadline, nor retried without the login
    // (the server would take an anonymous client).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    drop_user_and_database(&base, &database, &user).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_login_is_no_authentication() {
    let Some(base) = base_url() else { return };
    let database = fresh_database("knologin");
    let url = with_database(&base, &database);
    let conn = connection(&url, TransportOptions::new());
    assert!(conn.url().userid().is_none(), "{:?}", conn.url());
    round_trip(&conn, "nologinq").await;
    assert!(logged_in_as(&conn).await.is_empty());
    conn.close().await.expect("close");
    drop_database(&raw_database(&base, &database).await).await;
}
