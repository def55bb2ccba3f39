//! What the transport needs from the URL and the options: the server, the
//! database (the virtual host), the login, the timeouts and TLS.

use std::fmt;
use std::time::Duration;

use kombu_core::{BrokerUrl, ConnectionOptions, Error, ErrorKind, Result, SslOptions};
use url::Url;

/// The database used when the URL names none (kombu 3.0.37's default).
pub const DEFAULT_DATABASE: &str = "kombu_default";
/// CouchDB's port.
pub const DEFAULT_PORT: u16 = 5984;

/// The transport options `couchdb://` understands.
pub const KNOWN_OPTIONS: &[&str] = &[
    "polling_interval",
    "visibility_timeout",
    "request_timeout",
    "claim_batch",
];

/// A login for HTTP basic auth.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password (never shown).
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"**")
            .finish()
    }
}

/// Everything the transport reads from the URL and the options.
#[derive(Debug, Clone)]
pub struct CouchConfig {
    /// `http(s)://host:port/`, without a login.
    pub server: Url,
    /// The database (the URL's virtual host, checked).
    pub database: String,
    /// Basic auth, when the URL or the options give a login.
    pub credentials: Option<Credentials>,
    /// How long one fetch of the consume loop waits on the changes feed
    /// (also how often expired leases are looked for when nothing changes).
    pub polling_interval: Duration,
    /// How long a delivered, unacked message stays leased to its consumer.
    pub visibility_timeout: Duration,
    /// Limit on one HTTP request (the changes feed wait excepted).
    pub request_timeout: Duration,
    /// Limit on opening a TCP (and TLS) connection.
    pub connect_timeout: Option<Duration>,
    /// Candidates read per claim attempt (losers of a race try the next).
    pub claim_batch: usize,
    /// TLS settings (`https` when enabled).
    pub tls: SslOptions,
}

impl CouchConfig {
    /// Read the configuration. `url` has had its defaults filled in.
    ///
    /// ```
    /// use kombu_core::{BrokerUrl, ConnectionOptions};
    /// use kombu_couchdb::CouchConfig;
    ///
    /// let options = ConnectionOptions::new();
    /// let url = BrokerUrl::parse("couchdb://db.example:5984/jobs")?;
    /// let config = CouchConfig::new(&url, &options)?;
    /// assert_eq!(config.server.as_str(), "http://db.example:5984/");
    /// assert_eq!(config.database, "jobs");
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn new(url: &BrokerUrl, options: &ConnectionOptions) -> Result<Self> {
        let topts = &options.transport_options;
        topts.check_known(
            &[KNOWN_OPTIONS, kombu_core::spi::VIRTUAL_OPTIONS].concat(),
            "couchdb",
        )?;
        let scheme = if options.ssl.is_enabled() {
            "https"
        } else {
            "http"
        };
        let host = url.hostname().unwrap_or("localhost");
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let port = url.port().unwrap_or(DEFAULT_PORT);
        let server = Url::parse(&format!("{scheme}://{host}:{port}/")).map_err(|e| {
            Error::new(
                ErrorKind::InvalidUrl,
                format!("couchdb: bad host {host:?}: {e}"),
            )
        })?;
        let database = database_name(url.virtual_host())?;
        let claim_batch = topts.get_u64("claim_batch")?.unwrap_or(5);
        if claim_batch == 0 || claim_batch > 1000 {
            return Err(Error::invalid_option(
                "couchdb: claim_batch must be between 1 and 1000",
            ));
        }
        let visibility_timeout = topts
            .get_duration_secs("visibility_timeout")?
            .unwrap_or(Duration::from_secs(1800));
        if visibility_timeout < Duration::from_millis(100) {
            return Err(Error::invalid_option(
                "couchdb: visibility_timeout must be at least 0.1 seconds",
            ));
        }
        Ok(CouchConfig {
            server,
            database,
            credentials: credentials(url),
            polling_interval: topts
                .get_duration_secs("polling_interval")?
                .unwrap_or(Duration::from_secs(1))
                .max(Duration::from_millis(10)),
            visibility_timeout,
            request_timeout: topts
                .get_duration_secs("request_timeout")?
                .unwrap_or(Duration::from_secs(30)),
            connect_timeout: options.connect_timeout,
            claim_batch: claim_batch as usize,
            tls: options.ssl.clone(),
        })
    }
}

/// The database named by the virtual host: `kombu_default` when there is
/// none (or it is `/`), else a valid CouchDB name
/// (`[a-z][a-z0-9_$()+/-]*`).
///
/// ```
/// use kombu_couchdb::database_name;
/// assert_eq!(database_name(None)?, "kombu_default");
/// assert_eq!(database_name(Some("/"))?, "kombu_default");
/// assert_eq!(database_name(Some("jobs/eu-1"))?, "jobs/eu-1");
/// assert!(database_name(Some("Jobs")).is_err());
/// # Ok::<(), kombu_core::Error>(())
/// ```
pub fn database_name(virtual_host: Option<&str>) -> Result<String> {
    let name = virtual_host.unwrap_or("").trim_start_matches('/');
    if name.is_empty() {
        return Ok(DEFAULT_DATABASE.to_owned());
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_$()+-/".contains(c));
    if first_ok && rest_ok {
        Ok(name.to_owned())
    } else {
        Err(Error::new(
            ErrorKind::InvalidUrl,
            format!(
                "couchdb: {name:?} is not a valid database name (the virtual host must \
                 match [a-z][a-z0-9_$()+/-]*: lowercase, starting with a letter)"
            ),
        ))
    }
}

/// The login to send: the URL's (the keyword `userid`/`password` options
/// are folded in by the core), as written; none when it has none.
fn credentials(url: &BrokerUrl) -> Option<Credentials> {
    let username = url.userid().filter(|u| !u.is_empty())?.to_owned();
    let password = url.password().unwrap_or("").to_owned();
    Some(Credentials { username, password })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kombu_core::TransportOptions;

    fn config(url: &str, mut options: ConnectionOptions) -> Result<CouchConfig> {
        let url = BrokerUrl::parse(url)?;
        options.apply_query(&url)?;
        let url = url.completed(&kombu_core::url::UrlDefaults {
            hostname: Some("localhost"),
            port: Some(DEFAULT_PORT),
            ..Default::default()
        });
        CouchConfig::new(&url, &options)
    }

    #[test]
    fn defaults() {
        let c = config("couchdb://", ConnectionOptions::new()).unwrap();
        assert_eq!(c.server.as_str(), "http://localhost:5984/");
        assert_eq!(c.database, DEFAULT_DATABASE);
        assert_eq!(c.visibility_timeout, Duration::from_secs(1800));
        assert_eq!(c.polling_interval, Duration::from_secs(1));
        assert!(c.credentials.is_none(), "no login unless one is given");
    }

    #[test]
    fn login_and_database() {
        let c = config(
            "couchdb://admin:s3cret@couch:6984/orders",
            ConnectionOptions::new(),
        )
        .unwrap();
        let creds = c.credentials.clone().unwrap();
        assert_eq!(creds.username, "admin");
        assert_eq!(creds.password, "s3cret");
        assert_eq!(c.server.as_str(), "http://couch:6984/");
        assert_eq!(c.database, "orders");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn ssl_means_https() {
        let c = config("couchdb://h/db?ssl=1", ConnectionOptions::new()).unwrap();
        assert_eq!(c.server.scheme(), "https");
    }

    #[test]
    fn ipv6_host() {
        let c = config("couchdb://[::1]:5984/db", ConnectionOptions::new()).unwrap();
        assert_eq!(c.server.as_str(), "http://[::1]:5984/");
    }

    #[test]
    fn bad_database_names_are_refused_clearly() {
        for bad in ["Upper", "1abc", "a b", "_users", "a*b"] {
            let err = database_name(Some(bad)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidUrl, "{bad}");
            assert!(err.to_string().contains("[a-z]"), "{err}");
        }
        assert_eq!(database_name(Some("a$()+-_/9")).unwrap(), "a$()+-_/9");
    }

    #[test]
    fn options_are_read_and_checked() {
        let opts = TransportOptions::new()
            .set("visibility_timeout", 2.5)
            .set("polling_interval", 0.2)
            .set("claim_batch", 8);
        let c = config(
            "couchdb://h/db",
            ConnectionOptions::new().transport_options(opts),
        )
        .unwrap();
        assert_eq!(c.visibility_timeout, Duration::from_millis(2500));
        assert_eq!(c.polling_interval, Duration::from_millis(200));
        assert_eq!(c.claim_batch, 8);
        let unknown = TransportOptions::new().set("visibilty_timeout", 1);
        let err = config(
            "couchdb://h/db",
            ConnectionOptions::new().transport_options(unknown),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidOption);
        let zero = TransportOptions::new().set("claim_batch", 0);
        assert!(config(
            "couchdb://h/db",
            ConnectionOptions::new().transport_options(zero)
        )
        .is_err());
    }
}
