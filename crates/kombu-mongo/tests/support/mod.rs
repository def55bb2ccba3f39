//! Shared by the MongoDB integration tests: URLs with a database of the
//! test's own, a plain driver client to read raw documents, and clean-up.

#![allow(dead_code)]

use std::sync::Arc;

use kombu_core::{Connection, ConnectionOptions, Registry, TransportOptions};
use mongodb::bson::Document;

/// The test server's URL (`KOMBU_TEST_MONGODB_URL`), or `None` after a skip line.
pub fn base_url() -> Option<String> {
    kombu_testkit::test_url("mongodb")
}

/// `url` with its database replaced by `database` (query kept).
pub fn with_database(url: &str, database: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let authority_end = head[scheme_end..]
        .find('/')
        .map_or(head.len(), |i| scheme_end + i);
    let mut out = format!("{}/{database}", &head[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A fresh database name.
pub fn fresh_database(prefix: &str) -> String {
    kombu_testkit::unique(prefix).replace('-', "_")
}

/// A kombu-rs connection to `url` with the MongoDB transport.
pub fn connection(url: &str, options: TransportOptions) -> Connection {
    let mut registry = Registry::new();
    kombu_mongo::register(&mut registry);
    Connection::with_registry_options(
        url,
        ConnectionOptions::new().transport_options(options),
        Arc::new(registry),
    )
    .expect("mongodb URL")
}

/// A plain driver client on `url`'s server, for raw documents.
pub async fn raw_database(url: &str, database: &str) -> mongodb::Database {
    let client = mongodb::Client::with_uri_str(url)
        .await
        .expect("driver client");
    client.database(database)
}

/// Every document of `collection`, in natural order.
pub async fn documents(db: &mongodb::Database, collection: &str) -> Vec<Document> {
    use futures::TryStreamExt;
    db.collection::<Document>(collection)
        .find(mongodb::bson::doc! {})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("documents")
}

/// Drop a test database (best effort).
pub async fn drop_database(db: &mongodb::Database) {
    let _ = db.drop().await;
}
