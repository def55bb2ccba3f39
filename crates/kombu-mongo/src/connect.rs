//! Opening the client, checking the server, and creating kombu's
//! collections and indexes.

use futures::TryStreamExt;
use kombu_core::{Error, Result, SslOptions};
use mongodb::bson::{doc, Document};
use mongodb::options::{ClientOptions, Tls, TlsOptions};
use mongodb::{Client, Database};

use crate::config::MongoConfig;
use crate::error::map_driver;

/// Error code of "collection already exists".
const NAMESPACE_EXISTS: i32 = 48;

/// A client that answered, and its database.
/// The login is the URL's, as written, tried once (none when absent).
pub(crate) async fn open(config: &MongoConfig) -> Result<(Client, Database)> {
    let secret = config.secret();
    let options = client_options(config).await?;
    let client =
        Client::with_options(options).map_err(|e| map_driver(e, "creating the client", secret))?;
    let database = client.database(&config.database);
    // listCollections needs a login where the server wants one, so this
    // checks the address and the credentials at once.
    database.list_collection_names().await.map_err(|e| {
        map_driver(
            e,
            &format!("connecting to {}", config.redacted_uri()),
            secret,
        )
    })?;
    Ok((client, database))
}

/// The driver's options: its connection string, then kombu-rs's settings
/// where the string has none of its own.
async fn client_options(config: &MongoConfig) -> Result<ClientOptions> {
    let secret = config.secret();
    let uri = config.driver_uri();
    let mut options = ClientOptions::parse(&uri)
        .await
        .map_err(|e| map_driver(e, "reading the connection string", secret))?;
    if options.app_name.is_none() {
        options.app_name = Some("kombu-rs".into());
    }
    let given = |key: &str| {
        config
            .driver_query
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(key))
    };
    if let Some(timeout) = config.connect_timeout {
        if !given("connectTimeoutMS") {
            options.connect_timeout = Some(timeout);
        }
        if !given("serverSelectionTimeoutMS") {
            options.server_selection_timeout = Some(timeout);
        }
    }
    // The driver's own TLS keys (`tls`, `tlsCAFile`, ...) are the whole TLS
    // configuration; without them kombu's `ssl` settings apply, `ssl=true`
    // in the URL with `ssl_ca_certs` and the other `ssl_*` keys included.
    let driver_tls = config
        .driver_query
        .iter()
        .any(|(k, _)| k.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("tls")));
    if !driver_tls {
        apply_ssl(&mut options, &config.ssl)?;
    }
    Ok(options)
}

/// kombu's `ssl` settings, when the URL has none of the driver's TLS keys.
fn apply_ssl(options: &mut ClientOptions, ssl: &SslOptions) -> Result<()> {
    match ssl {
        SslOptions::Disabled => {}
        SslOptions::Custom {
            ca_certs,
            certfile,
            keyfile,
            verify,
            check_hostname: _,
        } => {
            if keyfile.is_some() && keyfile != certfile {
                return Err(Error::invalid_option(
                    "mongodb: the client key must be in the certificate file \
                     (tlsCertificateKeyFile): give ssl_certfile only, or \
                     tlsCertificateKeyFile in the URL",
                ));
            }
            if !verify {
                tracing::warn!(
                    "mongodb: ssl_cert_reqs=CERT_NONE: the server's certificate is not verified"
                );
            }
            let mut tls = TlsOptions::default();
            tls.ca_file_path = ca_certs.clone();
            tls.cert_key_file_path = certfile.clone();
            tls.allow_invalid_certificates = Some(!verify);
            options.tls = Some(Tls::Enabled(tls));
        }
        _ => options.tls = Some(Tls::Enabled(TlsOptions::default())),
    }
    Ok(())
}

/// kombu's collections and indexes (its `_create_broadcast` and
/// `_ensure_indexes`), and kombu-rs's one index of its own, on delayed
/// messages only ([`ensure_delayed_index`]); lease renewal looks its
/// messages up by `_id`.
pub(crate) async fn prepare(database: &Database, config: &MongoConfig) -> Result<()> {
    let secret = config.secret();
    let names = &config.collections;
    let existing = database
        .list_collection_names()
        .await
        .map_err(|e| map_driver(e, "listing collections", secret))?;
    if !existing.contains(&names.broadcast) {
        let created = database
            .create_collection(&names.broadcast)
            .capped(true)
            .size(config.capped_queue_size)
            .await;
        if let Err(err) = created {
            let exists = matches!(
                err.kind.as_ref(),
                mongodb::error::ErrorKind::Command(c) if c.code == NAMESPACE_EXISTS
            );
            if !exists {
                return Err(map_driver(err, "creating the broadcast collection", secret));
            }
        }
    }
    // The index specifications pymongo sends for kombu's `create_index`
    // calls, field for field: a server may refuse an index whose name
    // exists with other options (SecantusDB refuses kombu's
    // `background: true` index next to one without it).
    let mut required = vec![
        (
            &names.messages,
            doc! { "key": { "queue": 1, "priority": 1, "_id": 1 },
            "name": "queue_1_priority_1__id_1", "background": true },
        ),
        (
            &names.broadcast,
            doc! { "key": { "queue": 1 }, "name": "queue_1" },
        ),
        (
            &names.routing,
            doc! { "key": { "queue": 1, "exchange": 1 }, "name": "queue_1_exchange_1" },
        ),
    ];
    if config.ttl {
        for collection in [&names.messages, &names.routing, &names.queues] {
            required.push((
                collection,
                doc! { "key": { "expire_at": 1 }, "name": "expire_at_1", "expireAfterSeconds": 0 },
            ));
        }
    }
    for (collection, index) in required {
        let created = database
            .run_command(doc! { "createIndexes": collection.as_str(), "indexes": [index.clone()] })
            .await;
        if let Err(err) = created {
            if !same_index_exists(database, collection, &index, &err).await {
                return Err(map_driver(
                    err,
                    &format!("creating an index on {collection}"),
                    secret,
                ));
            }
        }
    }
    ensure_delayed_index(database, &names.messages).await;
    Ok(())
}

/// The partial index `queue_1_not_before_1` on the delayed messages of
/// `messages` (only documents with `not_before`: nothing is added to
/// indexing ordinary messages), for finding the next due one of a queue.
/// A server that refuses it is warned about and used without it (the
/// lookups then scan the queue's delayed messages).
async fn ensure_delayed_index(database: &Database, messages: &str) {
    let index = doc! {
        "key": { "queue": 1, crate::delayed::NOT_BEFORE: 1 },
        "name": "queue_1_not_before_1",
        "partialFilterExpression": { crate::delayed::NOT_BEFORE: { "$exists": true } },
    };
    let created = database
        .run_command(doc! { "createIndexes": messages, "indexes": [index] })
        .await;
    if let Err(err) = created {
        tracing::warn!(
            error = %err,
            "the index on delayed messages (queue_1_not_before_1) could not be created; \
             delayed messages are looked up without it"
        );
    }
}

/// True when `error` says an index of that name exists with other options
/// (`background`, ...) and it has the same keys: good enough to use.
async fn same_index_exists(
    database: &Database,
    collection: &str,
    index: &Document,
    error: &mongodb::error::Error,
) -> bool {
    const OPTIONS_CONFLICT: [i32; 2] = [85, 86];
    let conflict = matches!(
        error.kind.as_ref(),
        mongodb::error::ErrorKind::Command(c) if OPTIONS_CONFLICT.contains(&c.code)
    );
    if !conflict {
        return false;
    }
    let Ok(mut existing) = database
        .collection::<Document>(collection)
        .list_indexes()
        .await
    else {
        return false;
    };
    while let Ok(Some(model)) = existing.try_next().await {
        let name = model.options.as_ref().and_then(|o| o.name.as_deref());
        if name == index.get_str("name").ok() && Ok(&model.keys) == index.get_document("key") {
            tracing::debug!(
                collection,
                name,
                "index exists with other options; using it"
            );
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use kombu_core::{BrokerUrl, ConnectionOptions};

    async fn options_for(url: &str) -> ClientOptions {
        let url = BrokerUrl::parse(url).unwrap();
        let mut options = ConnectionOptions::new();
        options.apply_query(&url).unwrap();
        let config = MongoConfig::new(&url, &options).unwrap();
        client_options(&config).await.unwrap()
    }

    fn tls_of(options: &ClientOptions) -> Option<&TlsOptions> {
        match &options.tls {
            Some(Tls::Enabled(tls)) => Some(tls),
            _ => None,
        }
    }

    #[tokio::test]
    async fn kombu_ssl_keys_reach_the_driver_with_ssl_in_the_url() {
        let options =
            options_for("mongodb://h:27017/db?ssl=true&ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem")
                .await;
        let tls = tls_of(&options).expect("TLS on");
        assert_eq!(
            tls.ca_file_path.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        assert_eq!(
            tls.cert_key_file_path.as_deref(),
            Some(std::path::Path::new("/c.pem"))
        );
        assert_eq!(tls.allow_invalid_certificates, Some(false));
    }

    #[tokio::test]
    async fn the_drivers_tls_keys_win() {
        let options =
            options_for("mongodb://h:27017/db?tls=true&tlsCAFile=/driver.pem&ssl_ca_certs=/ca.pem")
                .await;
        let tls = tls_of(&options).expect("TLS on");
        assert_eq!(
            tls.ca_file_path.as_deref(),
            Some(std::path::Path::new("/driver.pem"))
        );
    }

    #[tokio::test]
    async fn cert_none_allows_invalid_certificates_and_ssl_off_is_off() {
        let options = options_for("mongodb://h:27017/db?ssl=true&ssl_cert_reqs=CERT_NONE").await;
        assert_eq!(
            tls_of(&options).expect("TLS on").allow_invalid_certificates,
            Some(true)
        );
        let options = options_for("mongodb://h:27017/db?ssl=false").await;
        assert!(tls_of(&options).is_none());
    }
}
