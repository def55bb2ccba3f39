//! From a kombu URL and options to the driver's connection string, the
//! database, the collection names and the transport's settings.
//!
//! The rule that splits the URL's query: a key kombu-rs knows (the
//! transport options in [`KNOWN_OPTIONS`], the virtual channel's
//! [`VIRTUAL_OPTIONS`] and the connection keys
//! kombu-core reads, see [`CORE_QUERY_KEYS`]) is kombu-rs's and is not given
//! to the driver; every other key goes to the MongoDB driver unchanged
//! (`retryWrites`, `replicaSet`, `authSource`, `tls`, ...), which refuses
//! the ones it does not know. `ssl` is both: kombu-rs reads it and the
//! driver gets it too.

use std::fmt;
use std::time::Duration;

use kombu_core::spi::VIRTUAL_OPTIONS;
use kombu_core::{BrokerUrl, ConnectionOptions, Error, Result, TransportOptions};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::KNOWN_OPTIONS;

/// Query keys kombu-core turns into connection options; not for the driver.
pub const CORE_QUERY_KEYS: &[&str] = &[
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
    "connect_timeout",
    "heartbeat",
    "insist",
    "login_method",
    "failover_strategy",
];

/// kombu's database when the URL names none.
pub const DEFAULT_DATABASE: &str = "kombu_default";

/// Everything needed to build characters in a URI's user or password part.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Characters escaped in a query value (the separators and `%`).
const QUERY_VALUE: &AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'&')
    .add(b'=')
    .add(b'#')
    .add(b'%')
    .add(b'+')
    .add(b'"');

/// The collections the transport uses (kombu's names by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collections {
    /// Queued messages (`messages`).
    pub messages: String,
    /// Bindings (`messages.routing`).
    pub routing: String,
    /// Fanout messages, capped (`messages.broadcast`).
    pub broadcast: String,
    /// Queue declarations and expiry (`messages.queues`).
    pub queues: String,
    /// Exchange declarations (`messages.exchanges`; kombu-rs only).
    pub exchanges: String,
}

/// The login, kept apart so it never shows.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// User name.
    pub username: String,
    /// Password (may be empty).
    pub password: Option<String>,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "**"))
            .finish()
    }
}

/// The transport's settings, read from the URL and the options.
#[derive(Debug, Clone)]
pub struct MongoConfig {
    /// `mongodb` or `mongodb+srv`.
    pub scheme: String,
    /// Host and, for `mongodb://`, port (`host:port`, IPv6 in brackets).
    pub host: String,
    /// The login, if any.
    pub login: Option<Login>,
    /// Query pairs handed to the driver.
    pub driver_query: Vec<(String, String)>,
    /// The database named in the URL, if one was (also the driver's
    /// default authentication database, as with pymongo).
    pub url_database: Option<String>,
    /// The database used: the URL's, else `default_database`.
    pub database: String,
    /// Collection names.
    pub collections: Collections,
    /// kombu's `ttl`: TTL indexes and `expire_at` fields.
    pub ttl: bool,
    /// kombu's `capped_queue_size` (bytes of the broadcast collection).
    pub capped_queue_size: u64,
    /// kombu's `calc_queue_size`: count messages for `size` (else 0).
    pub calc_queue_size: bool,
    /// How long a claimed message stays reserved without renewal.
    pub lease_timeout: Duration,
    /// How often a live client renews its leases (zero: never).
    pub lease_renew_interval: Duration,
    /// Pause between two polls of empty queues.
    pub polling_interval: Duration,
    /// Bound on connecting (kombu's `connect_timeout`).
    pub connect_timeout: Option<Duration>,
    /// Bound on each operation's answer (the driver has no socket
    /// timeout): transport option `socket_timeout`, default 10 s.
    pub socket_timeout: Duration,
    /// TLS asked for through kombu's `ssl` settings.
    pub ssl: kombu_core::SslOptions,
}

/// How long one operation waits for the server by default.
pub const DEFAULT_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

impl MongoConfig {
    /// Read the URL (defaults filled in) and the options.
    pub fn new(url: &BrokerUrl, options: &ConnectionOptions) -> Result<MongoConfig> {
        let to = &options.transport_options;
        check_options(url, to)?;
        let scheme = url.scheme().to_owned();
        let srv = scheme == "mongodb+srv";
        let hostname = url.hostname().unwrap_or("localhost");
        let host_part = if hostname.contains(':') {
            format!("[{hostname}]")
        } else {
            hostname.to_owned()
        };
        // SRV records give the ports; a port is an error for the driver.
        let host = match (srv, url.port()) {
            (false, Some(port)) => format!("{host_part}:{port}"),
            _ => host_part,
        };
        let url_database = url
            .virtual_host()
            .filter(|vhost| *vhost != "/")
            .map(str::to_owned);
        let default_database = to
            .get_str("default_database")?
            .unwrap_or(DEFAULT_DATABASE)
            .to_owned();
        let database = url_database.clone().unwrap_or(default_database);
        check_database_name(&database)?;
        let driver_query = url
            .query()
            .iter()
            .filter(|(key, _)| {
                !is_transport_option(key) && !CORE_QUERY_KEYS.contains(&key.as_str())
            })
            .cloned()
            .collect();
        let lease_timeout = to
            .get_duration_secs("lease_timeout")?
            .unwrap_or(Duration::from_secs(60));
        if lease_timeout < Duration::from_millis(100) {
            return Err(Error::invalid_option(
                "lease_timeout: must be at least 0.1 seconds",
            ));
        }
        let lease_renew_interval = to
            .get_duration_secs("lease_renew_interval")?
            .unwrap_or(lease_timeout / 3);
        if lease_renew_interval >= lease_timeout {
            return Err(Error::invalid_option(
                "lease_renew_interval: must be shorter than lease_timeout (0 turns renewal off)",
            ));
        }
        let name = |key: &str, default: &str| -> Result<String> {
            let value = to.get_str(key)?.unwrap_or(default);
            if value.is_empty() || value.starts_with("system.") || value.contains('$') {
                return Err(Error::invalid_option(format!(
                    "{key}: {value:?} is not a usable collection name"
                )));
            }
            Ok(value.to_owned())
        };
        let collections = Collections {
            messages: name("messages_collection", "messages")?,
            routing: name("routing_collection", "messages.routing")?,
            broadcast: name("broadcast_collection", "messages.broadcast")?,
            queues: name("queues_collection", "messages.queues")?,
            exchanges: name("exchanges_collection", "messages.exchanges")?,
        };
        Ok(MongoConfig {
            scheme,
            host,
            login: login(url),
            driver_query,
            url_database,
            database,
            collections,
            ttl: to.get_bool("ttl")?.unwrap_or(false),
            capped_queue_size: to
                .get_u64("capped_queue_size")?
                .unwrap_or(100_000)
                .max(4096),
            calc_queue_size: to.get_bool("calc_queue_size")?.unwrap_or(true),
            lease_timeout,
            lease_renew_interval,
            polling_interval: to
                .get_duration_secs("polling_interval")?
                .unwrap_or(Duration::from_millis(100)),
            connect_timeout: options.connect_timeout,
            socket_timeout: match to.get_duration_secs("socket_timeout")? {
                None => DEFAULT_SOCKET_TIMEOUT,
                Some(d) if d.is_zero() => {
                    return Err(Error::invalid_option(
                        "socket_timeout: must be more than 0 seconds",
                    ))
                }
                Some(d) => d,
            },
            ssl: options.ssl.clone(),
        })
    }

    /// The driver's connection string, with the login as written. It holds
    /// the password: never show it (see [`MongoConfig::redacted_uri`]).
    pub fn driver_uri(&self) -> String {
        let mut uri = format!("{}://", self.scheme);
        if let Some(login) = &self.login {
            uri.push_str(&utf8_percent_encode(&login.username, USERINFO).to_string());
            if let Some(password) = &login.password {
                uri.push(':');
                uri.push_str(&utf8_percent_encode(password, USERINFO).to_string());
            }
            uri.push('@');
        }
        uri.push_str(&self.host);
        uri.push('/');
        if let Some(db) = &self.url_database {
            uri.push_str(&utf8_percent_encode(db, USERINFO).to_string());
        }
        if !self.driver_query.is_empty() {
            uri.push('?');
            let pairs: Vec<String> = self
                .driver_query
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}={}",
                        utf8_percent_encode(k, QUERY_VALUE),
                        utf8_percent_encode(v, QUERY_VALUE)
                    )
                })
                .collect();
            uri.push_str(&pairs.join("&"));
        }
        uri
    }

    /// The connection string for messages and logs: no password.
    pub fn redacted_uri(&self) -> String {
        let mut uri = format!("{}://", self.scheme);
        if let Some(login) = &self.login {
            uri.push_str(&login.username);
            if login.password.is_some() {
                uri.push_str(":**");
            }
            uri.push('@');
        }
        uri.push_str(&self.host);
        uri.push('/');
        uri.push_str(&self.database);
        uri
    }

    /// The password, for scrubbing driver messages.
    pub fn secret(&self) -> Option<&str> {
        self.login
            .as_ref()
            .and_then(|l| l.password.as_deref())
            .filter(|p| !p.is_empty())
    }
}

/// Unknown transport options set in code are an error; keys that came
/// from the URL's query and are not kombu's go to the driver instead.
fn check_options(url: &BrokerUrl, options: &TransportOptions) -> Result<()> {
    let mut own = options.clone();
    for (key, _) in url.query() {
        if !is_transport_option(key) {
            own.remove(key);
        }
    }
    own.check_known(&[KNOWN_OPTIONS, VIRTUAL_OPTIONS].concat(), "mongodb")
}

/// A transport option of this crate's or of the virtual channel's.
fn is_transport_option(key: &str) -> bool {
    KNOWN_OPTIONS.contains(&key) || VIRTUAL_OPTIONS.contains(&key)
}

/// MongoDB's rules for database names.
fn check_database_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > 63
        || name
            .chars()
            .any(|c| matches!(c, '/' | '\\' | '.' | ' ' | '"' | '$' | '\0'));
    if bad {
        return Err(Error::new(
            kombu_core::ErrorKind::InvalidUrl,
            format!(
                "mongodb: {name:?} is not a database name (the URL's virtual host is the \
                 database: 1-63 characters, none of / \\ . space \" $)"
            ),
        ));
    }
    Ok(())
}

/// The login the user asked for (the URL's, with the keyword options
/// folded in by the core), as written; none when absent.
fn login(url: &BrokerUrl) -> Option<Login> {
    let username = url.userid().filter(|u| !u.is_empty())?.to_owned();
    let password = url.password().map(str::to_owned);
    Some(Login { username, password })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str, to: TransportOptions) -> Result<MongoConfig> {
        let url = BrokerUrl::parse(url)?;
        let mut options = ConnectionOptions::new().transport_options(to);
        options.apply_query(&url)?;
        let url = url.completed(&kombu_core::url::UrlDefaults {
            hostname: Some("localhost"),
            port: Some(27017),
            ..Default::default()
        });
        MongoConfig::new(&url, &options)
    }

    #[test]
    fn vhost_is_the_database_else_kombu_default() {
        let c = config("mongodb://localhost/jobs", TransportOptions::new()).unwrap();
        assert_eq!(c.database, "jobs");
        assert_eq!(c.driver_uri(), "mongodb://localhost:27017/jobs");
        let c = config("mongodb://localhost", TransportOptions::new()).unwrap();
        assert_eq!(c.database, "kombu_default");
        assert_eq!(c.driver_uri(), "mongodb://localhost:27017/");
        let to = TransportOptions::new().set("default_database", "other");
        assert_eq!(config("mongodb://h/", to).unwrap().database, "other");
    }

    #[test]
    fn query_splits_between_kombu_and_the_driver() {
        let c = config(
            "mongodb://h:1234/db?retryWrites=false&ttl=true&replicaSet=rs0&heartbeat=5&ssl=0",
            TransportOptions::new(),
        )
        .unwrap();
        assert!(c.ttl);
        assert_eq!(
            c.driver_uri(),
            "mongodb://h:1234/db?retryWrites=false&replicaSet=rs0&ssl=0"
        );
    }

    #[test]
    fn unknown_code_options_are_refused() {
        let err = config("mongodb://h/", TransportOptions::new().set("tll", true)).unwrap_err();
        assert!(err.to_string().contains("\"tll\""), "{err}");
    }

    #[test]
    fn login_is_encoded_and_never_shown() {
        let c = config("mongodb://us%40er:p%40ss%2Fw@h/db", TransportOptions::new()).unwrap();
        assert_eq!(c.driver_uri(), "mongodb://us%40er:p%40ss%2Fw@h:27017/db");
        assert_eq!(c.redacted_uri(), "mongodb://us@er:**@h:27017/db");
        assert!(!format!("{c:?}").contains("p@ss"));
        assert_eq!(c.login.unwrap().username, "us@er");
    }

    #[test]
    fn no_login_unless_given() {
        let c = config("mongodb://h/db", TransportOptions::new()).unwrap();
        assert!(c.login.is_none());
        assert_eq!(c.driver_uri(), "mongodb://h:27017/db");
    }

    #[test]
    fn guest_is_a_login_like_any_other() {
        // No guessing that guest/guest means "no credentials": it is sent.
        let c = config("mongodb://guest:guest@h/db", TransportOptions::new()).unwrap();
        assert_eq!(c.driver_uri(), "mongodb://guest:guest@h:27017/db");
        assert_eq!(c.login.unwrap().username, "guest");
        let c = config("mongodb://guest@h/db", TransportOptions::new()).unwrap();
        assert_eq!(c.driver_uri(), "mongodb://guest@h:27017/db");
        assert_eq!(c.login.unwrap().password, None);
    }

    #[test]
    fn virtual_channel_options_are_kombus_not_the_drivers() {
        let c = config(
            "mongodb://h/db?operation_timeout=2&unroutable_queue=lost&w=1",
            TransportOptions::new(),
        )
        .unwrap();
        assert_eq!(c.driver_uri(), "mongodb://h:27017/db?w=1");
        let to = TransportOptions::new()
            .set("operation_timeout", 2)
            .set("unroutable_queue", "lost");
        assert!(config("mongodb://h/db", to).is_ok());
    }

    #[test]
    fn srv_has_no_port_and_ipv6_has_brackets() {
        let c = config(
            "mongodb+srv://cluster.example.com/db",
            TransportOptions::new(),
        )
        .unwrap();
        assert_eq!(c.driver_uri(), "mongodb+srv://cluster.example.com/db");
        let c = config("mongodb://[::1]:27018/db", TransportOptions::new()).unwrap();
        assert_eq!(c.driver_uri(), "mongodb://[::1]:27018/db");
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(config("mongodb://h/a.b", TransportOptions::new()).is_err());
        let to = TransportOptions::new().set("messages_collection", "");
        assert!(config("mongodb://h/db", to).is_err());
        let to = TransportOptions::new()
            .set("lease_timeout", 1)
            .set("lease_renew_interval", 2);
        assert!(config("mongodb://h/db", to).is_err());
    }
}
