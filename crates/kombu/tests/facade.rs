//! The facade: scheme lookup, errors, the reference page's URLs and
//! options, custom transports, and the README's transport table.

use std::time::Duration;

use kombu::{Connection, ConnectionOptions, ErrorKind};

#[test]
fn unknown_scheme_lists_the_compiled_in_ones() {
    kombu::install_default_transports();
    let err = Connection::new("nosuch://host").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownScheme);
    let text = err.to_string();
    assert!(text.contains("\"nosuch\""), "{text}");
    assert!(text.contains("memory"), "{text}");
}

#[test]
fn default_url_is_amqp_and_names_the_feature() {
    kombu::install_default_transports();
    if kombu::default_registry().resolve("amqp").is_ok() {
        return; // the amqp feature is on: the default URL resolves
    }
    // The reference page: a connection without arguments is
    // amqp://guest:guest@localhost:5672//.
    for url in ["", "amqp://", "amqp://guest:guest@localhost:5672//"] {
        let err = Connection::new(url).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FeatureDisabled, "{url}");
        assert!(err.to_string().contains("\"amqp\""), "{err}");
    }
}

#[test]
fn no_url_means_amqp_on_localhost_when_compiled_in() {
    kombu::install_default_transports();
    if kombu::default_registry().resolve("amqp").is_err() {
        return; // covered by default_url_is_amqp_and_names_the_feature
    }
    let conn = Connection::new("").unwrap();
    assert_eq!(conn.transport_name(), "amqp");
    assert_eq!(conn.as_uri(), "amqp://guest:**@localhost:5672//");
    assert!(!conn.connected());
}

#[test]
fn malformed_url_names_the_part_and_hides_the_password() {
    kombu::install_default_transports();
    let err = Connection::new("memory://user:hunter2secret@host:99999/").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidUrl);
    let text = format!("{err} {err:?}");
    assert!(text.contains("port"), "{text}");
    assert!(!text.contains("hunter2secret"), "{text}");
}

#[test]
fn connection_is_lazy_and_masks_the_password() {
    kombu::install_default_transports();
    let conn = Connection::new("memory://alice:s3cr3tpass@somewhere:1234/vh").unwrap();
    assert!(!conn.connected());
    let shown = format!("{} {:?}", conn.as_uri(), conn);
    assert!(!shown.contains("s3cr3tpass"), "{shown}");
    assert!(conn.as_uri_with_password().contains("s3cr3tpass"));
    assert_eq!(conn.url().hostname(), Some("somewhere"));
    assert_eq!(conn.url().port(), Some(1234));
    assert_eq!(conn.url().virtual_host(), Some("vh"));
}

#[test]
fn keyword_options_fill_what_the_url_leaves_out() {
    kombu::install_default_transports();
    let opts = ConnectionOptions::new()
        .hostname("kwhost")
        .userid("kwuser")
        .password("kwpass")
        .virtual_host("kwvhost")
        .port(7777);
    let conn = Connection::with_options("memory://", opts.clone()).unwrap();
    let url = conn.url();
    assert_eq!(url.hostname(), Some("kwhost"));
    assert_eq!(url.userid(), Some("kwuser"));
    assert_eq!(url.password(), Some("kwpass"));
    assert_eq!(url.virtual_host(), Some("kwvhost"));
    assert_eq!(url.port(), Some(7777));
    // Values in the URL win over keyword arguments.
    let conn = Connection::with_options("memory://u:p@urlhost:1/urlvhost", opts).unwrap();
    assert_eq!(conn.url().hostname(), Some("urlhost"));
    assert_eq!(conn.url().userid(), Some("u"));
    assert_eq!(conn.url().virtual_host(), Some("urlvhost"));
    assert_eq!(conn.url().port(), Some(1));
}

#[test]
fn absent_parts_stay_absent_except_the_transports_own_defaults() {
    kombu::install_default_transports();
    let conn = Connection::new("memory://").unwrap();
    let url = conn.url();
    assert_eq!(url.hostname(), Some("localhost"));
    assert_eq!(url.userid(), None, "no invented login");
    assert_eq!(url.password(), None);
    assert_eq!(url.virtual_host(), None);
}

#[cfg(feature = "full")]
#[test]
fn each_transport_fills_its_own_defaults() {
    kombu::install_default_transports();
    let amqp = Connection::new("amqp://").unwrap();
    assert_eq!(
        amqp.as_uri_with_password(),
        "amqp://guest:guest@localhost:5672//"
    );
    let amqps = Connection::new("amqps://h").unwrap();
    assert_eq!(amqps.url().port(), Some(5671));
    let redis = Connection::new("redis://").unwrap();
    assert_eq!(redis.as_uri_with_password(), "redis://localhost:6379");
    let acl = Connection::new("redis://guest:pw@h/0").unwrap();
    assert_eq!(
        (acl.url().userid(), acl.url().password()),
        (Some("guest"), Some("pw")),
        "an explicit login is kept as written"
    );
    let mongo = Connection::new("mongodb://h").unwrap();
    assert_eq!(
        (mongo.url().userid(), mongo.url().port()),
        (None, Some(27017))
    );
}

#[cfg(feature = "full")]
#[test]
fn the_disabled_feature_list_matches_the_transport_crates() {
    let infos = [
        &kombu_memory::INFO,
        &kombu_amqp::INFO,
        &kombu_redis::INFO,
        &kombu_redis::SENTINEL_INFO,
        &kombu_redis::CLUSTER_INFO,
        &kombu_sqs::INFO,
        &kombu_mongo::INFO,
        &kombu_beanstalk::INFO,
        &kombu_couchdb::INFO,
        &kombu_nats::INFO,
    ];
    for (feature, listed) in kombu::TRANSPORT_FEATURES {
        // A feature may bring several transports (redis: redis, sentinel).
        let schemes: Vec<&str> = infos
            .iter()
            .filter(|info| info.feature == *feature)
            .flat_map(|info| info.schemes.iter().copied())
            .collect();
        assert_eq!(*listed, schemes.as_slice(), "schemes of feature {feature}");
    }
    for info in infos {
        assert!(
            kombu::TRANSPORT_FEATURES
                .iter()
                .any(|(feature, _)| *feature == info.feature),
            "feature {} is not in TRANSPORT_FEATURES",
            info.feature
        );
    }
}

#[tokio::test]
async fn a_pooled_connection_and_a_connection_are_one_type() {
    kombu::install_default_transports();
    fn name(conn: &kombu::Connection) -> &'static str {
        conn.transport_name()
    }
    let conn = Connection::new("memory://one-type").unwrap();
    let pool =
        kombu::ConnectionPool::new("memory://one-type", ConnectionOptions::new(), 2).unwrap();
    let pooled = pool.acquire().await.unwrap();
    assert_eq!(name(&pooled), name(&conn));
    let core: &kombu_core::Connection = &conn;
    assert_eq!(name(core), "memory");
}

#[test]
fn transport_option_picks_the_transport_when_no_url() {
    kombu::install_default_transports();
    let conn = Connection::with_options("", ConnectionOptions::new().transport("memory")).unwrap();
    assert_eq!(conn.transport_name(), "memory");
}

#[test]
fn query_options_become_typed_options_or_transport_options() {
    kombu::install_default_transports();
    let conn =
        Connection::new("memory://localhost/?connect_timeout=2.5&polling_interval=0.05").unwrap();
    assert_eq!(
        conn.options().connect_timeout,
        Some(Duration::from_millis(2500))
    );
    assert_eq!(
        conn.options()
            .transport_options
            .get_str("polling_interval")
            .unwrap(),
        Some("0.05")
    );
}

#[tokio::test]
async fn unknown_transport_option_is_an_error_naming_it() {
    kombu::install_default_transports();
    let conn = Connection::new("memory://x/?visibilty_timeout=5").unwrap();
    let err = conn.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidOption);
    assert!(err.to_string().contains("visibilty_timeout"), "{err}");
}

#[tokio::test]
async fn failover_list_keeps_order_and_connects() {
    kombu::install_default_transports();
    let conn = Connection::new("memory://first;memory://second").unwrap();
    let hosts: Vec<_> = conn
        .urls()
        .iter()
        .map(|u| u.hostname().unwrap().to_owned())
        .collect();
    assert_eq!(hosts, ["first", "second"]);
    conn.connect().await.unwrap();
    assert!(conn.connected());
    assert_eq!(conn.url().hostname(), Some("first"));
    conn.close().await.unwrap();
    assert!(!conn.connected());
}

#[cfg(feature = "full")]
#[test]
fn readme_transport_table_matches_the_capabilities() {
    kombu::install_default_transports();
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("<!-- transport-table:start -->")
        .expect("README has the table start marker");
    let end = readme
        .find("<!-- transport-table:end -->")
        .expect("README has the table end marker");
    let in_readme = readme[start..end]
        .trim_start_matches("<!-- transport-table:start -->")
        .trim();
    let generated = kombu::transport_table(&kombu::default_registry());
    assert_eq!(
        in_readme,
        generated.trim(),
        "README's transport table is stale; paste this:\n{generated}"
    );
}
