//! What a `redis://` URL and its transport options mean: where to connect,
//! which database, the credentials, and kombu's channel settings.

use std::path::PathBuf;
use std::time::Duration;

use kombu_core::spi::VIRTUAL_OPTIONS;
use kombu_core::{BrokerUrl, ConnectionOptions, Error, ErrorKind, Result, SslOptions};
use serde_json::Value;

/// Transport options `redis://` reads: kombu 5.7's names (with its
/// defaults) plus this transport's own (`fanout_mode`, `binding_cache_ttl`,
/// `polling_interval`, `db`). The core's `unroutable_queue` and
/// `operation_timeout` ([`VIRTUAL_OPTIONS`]) are accepted too.
///
/// ```
/// assert!(kombu_redis::KNOWN_OPTIONS.contains(&"visibility_timeout"));
/// assert!(!kombu_redis::KNOWN_OPTIONS.contains(&"unroutable_queue")); // the core's
/// ```
pub const KNOWN_OPTIONS: &[&str] = &[
    "visibility_timeout",
    "global_keyprefix",
    "fanout_prefix",
    "fanout_patterns",
    "priority_steps",
    "queue_order_strategy",
    "health_check_interval",
    "max_connections",
    "socket_timeout",
    "socket_connect_timeout",
    "unacked_restore_limit",
    "unacked_restore_interval",
    "unacked_key",
    "unacked_index_key",
    "unacked_mutex_key",
    "unacked_mutex_expire",
    "sep",
    "fanout_mode",
    "binding_cache_ttl",
    "polling_interval",
    "db",
    "master_name",
];

/// The port of a Redis Sentinel when a `sentinel://` URL gives none.
pub const SENTINEL_PORT: u16 = 26379;

/// Where the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `redis://host:port`.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port (6379 by default).
        port: u16,
    },
    /// `rediss://host:port`.
    Tls {
        /// Host name or address.
        host: String,
        /// Port (6379 by default).
        port: u16,
        /// Skip certificate checks (`ssl_cert_reqs=CERT_NONE`).
        insecure: bool,
        /// CA bundle, client certificate and key, when given.
        ca_certs: Option<PathBuf>,
        /// Client certificate (mutual TLS).
        certfile: Option<PathBuf>,
        /// Client key (mutual TLS).
        keyfile: Option<PathBuf>,
    },
    /// `redis+socket:///path/to/socket`.
    Unix(PathBuf),
}

/// How fanout exchanges deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanoutMode {
    /// kombu's PUB/SUB (`PUBLISH /{db}.{exchange}`): interoperable, but a
    /// subscriber that is not connected misses the message.
    PubSub,
    /// A copy in each bound queue's list: nothing is lost, acked like any
    /// message; Python kombu consumers of fanout queues do not read them.
    Durable,
}

/// In which order a consumer of several queues looks at them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOrder {
    /// Rotate, so each queue gets its turn (kombu's default).
    RoundRobin,
    /// Always in the order the queues were first consumed.
    Priority,
    /// Alphabetical.
    Sorted,
}

/// Login to send, if any.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// ACL user name (`None`: the default user).
    pub username: Option<String>,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"**")
            .finish()
    }
}

/// Everything the transport needs from the URL and the options.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Where to connect.
    pub address: Address,
    /// The database number (the URL's virtual host).
    pub db: i64,
    /// AUTH, when the user gave credentials.
    pub credentials: Option<Credentials>,
    /// `visibility_timeout` (3600 s).
    pub visibility_timeout: Duration,
    /// `global_keyprefix` ("").
    pub global_keyprefix: String,
    /// The fanout channel prefix, already formatted (`/{db}.` -> `/0.`).
    pub fanout_prefix: String,
    /// `fanout_patterns` (true).
    pub fanout_patterns: bool,
    /// `priority_steps` ([0, 3, 6, 9]).
    pub priority_steps: Vec<u8>,
    /// `queue_order_strategy` (round_robin).
    pub queue_order: QueueOrder,
    /// `health_check_interval` (25 s; zero: off).
    pub health_check_interval: Duration,
    /// `socket_timeout`: how long a command may wait for its answer
    /// (none given: [`DEFAULT_RESPONSE_TIMEOUT`]; see
    /// [`RedisConfig::response_timeout`]).
    pub socket_timeout: Option<Duration>,
    /// `socket_connect_timeout` (none: the connection's `connect_timeout`,
    /// else [`DEFAULT_CONNECT_TIMEOUT`]; see [`RedisConfig::connect_timeout`]).
    pub socket_connect_timeout: Option<Duration>,
    /// `unacked_restore_limit` (none: everything due).
    pub unacked_restore_limit: Option<u64>,
    /// `unacked_restore_interval` (10 s).
    pub unacked_restore_interval: Duration,
    /// `unacked_key` ("unacked").
    pub unacked_key: String,
    /// `unacked_index_key` ("unacked_index").
    pub unacked_index_key: String,
    /// `unacked_mutex_key` ("unacked_mutex").
    pub unacked_mutex_key: String,
    /// `unacked_mutex_expire` (300 s): the longest a restore sweep keeps
    /// the mutex at a time. kombu-rs takes it for at most 10 s and renews
    /// it between batches, so a sweep cut short blocks others briefly.
    pub unacked_mutex_expire: Duration,
    /// `sep` ("\x06\x16").
    pub sep: String,
    /// `fanout_mode` (pubsub).
    pub fanout_mode: FanoutMode,
    /// `binding_cache_ttl` (1 s): how long another process's binding
    /// changes may go unseen by this publisher.
    pub binding_cache_ttl: Duration,
    /// `polling_interval` (0.02 s): the longest pause between two looks at
    /// empty queues.
    pub polling_interval: Duration,
    /// `sentinel://`: the master's name (`master_name`); `address` is then
    /// the sentinel to ask for the master's address.
    pub master_name: Option<String>,
    /// `rediscluster://`: the address is one seed node of a Redis
    /// Cluster; a queue's keys share one hash slot.
    pub cluster: bool,
}

/// How long a command waits for its answer when `socket_timeout` is not
/// given. Every command kombu-rs sends returns at once (no blocking pops),
/// so this only bounds how long a stopped or unreachable server can hold a
/// call before it fails with a `Timeout` error.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long opening a connection may take when neither
/// `socket_connect_timeout` nor the connection's `connect_timeout` is given.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl RedisConfig {
    /// The bound on one command's answer: `socket_timeout`, else
    /// [`DEFAULT_RESPONSE_TIMEOUT`].
    pub fn response_timeout(&self) -> Duration {
        self.socket_timeout.unwrap_or(DEFAULT_RESPONSE_TIMEOUT)
    }

    /// The bound on opening a connection: `socket_connect_timeout`, else
    /// [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect_timeout(&self) -> Duration {
        self.socket_connect_timeout
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::invalid_option(message)
}

/// The database number of a virtual host: none or `/` is 0.
///
/// ```
/// use kombu_redis::config::parse_db;
/// assert_eq!(parse_db(None).unwrap(), 0);
/// assert_eq!(parse_db(Some("/")).unwrap(), 0);
/// assert_eq!(parse_db(Some("3")).unwrap(), 3);
/// assert!(parse_db(Some("jobs")).is_err());
/// ```
pub fn parse_db(vhost: Option<&str>) -> Result<i64> {
    let Some(vhost) = vhost else { return Ok(0) };
    let trimmed = vhost.strip_prefix('/').unwrap_or(vhost);
    if trimmed.is_empty() {
        return Ok(0);
    }
    trimmed.parse::<u32>().map(i64::from).map_err(|_| {
        Error::new(
            ErrorKind::InvalidUrl,
            format!(
                "redis: the virtual host is the database number, a non-negative integer, not {vhost:?}"
            ),
        )
    })
}

/// `priority_steps` from a JSON list or a text like `0,3,6,9` / `[0, 3]`.
fn parse_steps(value: &Value) -> Result<Vec<u8>> {
    let numbers: Vec<u64> = match value {
        Value::Array(items) => items
            .iter()
            .map(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            })
            .collect::<Option<_>>()
            .ok_or_else(|| invalid("priority_steps: every step must be an integer 0-255"))?,
        Value::String(text) => text
            .trim_matches(|c| c == '[' || c == ']' || c == ' ')
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse::<u64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| {
                invalid(format!(
                    "priority_steps: {text:?} is not a list of integers"
                ))
            })?,
        other => {
            return Err(invalid(format!(
                "priority_steps: {other} is not a list of integers"
            )))
        }
    };
    let mut steps: Vec<u8> = numbers
        .into_iter()
        .map(|n| u8::try_from(n).map_err(|_| invalid("priority_steps: a step is over 255")))
        .collect::<Result<_>>()?;
    steps.sort_unstable();
    steps.dedup();
    if steps.first() != Some(&0) {
        return Err(invalid("priority_steps: the first step must be 0"));
    }
    Ok(steps)
}

impl RedisConfig {
    /// Read the URL (defaults already filled in) and the options.
    pub fn new(url: &BrokerUrl, options: &ConnectionOptions) -> Result<Self> {
        let to = &options.transport_options;
        to.check_known(&[KNOWN_OPTIONS, VIRTUAL_OPTIONS].concat(), "redis")?;
        let scheme = url.scheme();
        let tls = scheme == "rediss" || options.ssl.is_enabled() && scheme != "redis+socket";
        let host = url.hostname().unwrap_or("localhost").to_owned();
        let sentinel = scheme == "sentinel";
        let port = url
            .port()
            .unwrap_or(if sentinel { SENTINEL_PORT } else { 6379 });
        // kombu's sentinel transport option (other schemes ignore it, as
        // kombu does).
        let master_name = to
            .get_str("master_name")?
            .filter(|name| sentinel && !name.is_empty())
            .map(str::to_owned);
        if sentinel && master_name.is_none() {
            return Err(invalid(
                "sentinel:// needs the master's name: the transport option \
                 master_name (or ?master_name= in the URL)",
            ));
        }
        let (address, vhost_db) = if scheme == "redis+socket" {
            if url.path().is_empty() || url.path() == "/" {
                return Err(Error::new(
                    ErrorKind::InvalidUrl,
                    "redis+socket: the URL needs the socket's path: redis+socket:///path/to/redis.sock",
                ));
            }
            (Address::Unix(PathBuf::from(url.path())), 0)
        } else if tls {
            let (insecure, ca_certs, certfile, keyfile) = match &options.ssl {
                SslOptions::Custom {
                    ca_certs,
                    certfile,
                    keyfile,
                    verify,
                    check_hostname,
                } => (
                    !*verify || !*check_hostname,
                    ca_certs.clone(),
                    certfile.clone(),
                    keyfile.clone(),
                ),
                _ => (false, None, None, None),
            };
            (
                Address::Tls {
                    host,
                    port,
                    insecure,
                    ca_certs,
                    certfile,
                    keyfile,
                },
                parse_db(url.virtual_host())?,
            )
        } else {
            (Address::Tcp { host, port }, parse_db(url.virtual_host())?)
        };
        let db = match to.get("db") {
            None => vhost_db,
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(i64::from)
                .ok_or_else(|| invalid("db: not a database number"))?,
            Some(Value::String(s)) => {
                parse_db(Some(s)).map_err(|e| invalid(format!("db: {}", e.message())))?
            }
            Some(other) => return Err(invalid(format!("db: {other} is not a database number"))),
        };
        let cluster = scheme == "rediscluster";
        if cluster && db != 0 {
            return Err(Error::new(
                ErrorKind::InvalidUrl,
                format!("rediscluster: a Redis Cluster has database 0 only, not {db}"),
            ));
        }
        let credentials = credentials(url);
        let keyprefix_fanout = match to.get("fanout_prefix") {
            None => "/{db}.".to_owned(),
            Some(Value::String(s)) if !is_boolish(s) => s.clone(),
            Some(_) => {
                if to.get_bool("fanout_prefix")?.unwrap_or(true) {
                    "/{db}.".to_owned()
                } else {
                    String::new()
                }
            }
        };
        let fanout_mode = match to.get_str("fanout_mode")?.unwrap_or("pubsub") {
            "pubsub" | "pub/sub" | "PUB/SUB" => FanoutMode::PubSub,
            "durable" => FanoutMode::Durable,
            other => {
                return Err(invalid(format!(
                    "fanout_mode: {other:?} is not \"pubsub\" or \"durable\""
                )))
            }
        };
        let queue_order = match to.get_str("queue_order_strategy")?.unwrap_or("round_robin") {
            "round_robin" => QueueOrder::RoundRobin,
            "priority" => QueueOrder::Priority,
            "sorted" => QueueOrder::Sorted,
            other => {
                return Err(invalid(format!(
                    "queue_order_strategy: {other:?} is not round_robin, priority or sorted"
                )))
            }
        };
        let priority_steps = match to.get("priority_steps") {
            None => vec![0, 3, 6, 9],
            Some(value) => parse_steps(value)?,
        };
        let text = |key: &str, default: &str| -> Result<String> {
            Ok(to.get_str(key)?.unwrap_or(default).to_owned())
        };
        let secs = |key: &str| to.get_duration_secs(key);
        Ok(RedisConfig {
            address,
            db,
            credentials,
            visibility_timeout: secs("visibility_timeout")?.unwrap_or(Duration::from_secs(3600)),
            global_keyprefix: text("global_keyprefix", "")?,
            fanout_prefix: keyprefix_fanout.replace("{db}", &db.to_string()),
            fanout_patterns: to.get_bool("fanout_patterns")?.unwrap_or(true),
            priority_steps,
            queue_order,
            health_check_interval: secs("health_check_interval")?
                .unwrap_or(Duration::from_secs(25)),
            socket_timeout: secs("socket_timeout")?,
            socket_connect_timeout: secs("socket_connect_timeout")?.or(options.connect_timeout),
            unacked_restore_limit: to.get_u64("unacked_restore_limit")?,
            unacked_restore_interval: secs("unacked_restore_interval")?
                .unwrap_or(Duration::from_secs(10)),
            unacked_key: text("unacked_key", "unacked")?,
            unacked_index_key: text("unacked_index_key", "unacked_index")?,
            unacked_mutex_key: text("unacked_mutex_key", "unacked_mutex")?,
            unacked_mutex_expire: secs("unacked_mutex_expire")?.unwrap_or(Duration::from_secs(300)),
            sep: text("sep", "\x06\x16")?,
            fanout_mode,
            binding_cache_ttl: secs("binding_cache_ttl")?.unwrap_or(Duration::from_secs(1)),
            polling_interval: secs("polling_interval")?.unwrap_or(Duration::from_millis(20)),
            master_name,
            cluster,
        })
    }
}

fn is_boolish(s: &str) -> bool {
    matches!(
        s.to_ascii_lowercase().as_str(),
        "1" | "0" | "true" | "false" | "yes" | "no" | "on" | "off"
    )
}

/// The login the user asked for, as written (the keyword `userid` and
/// `password` options are folded into the URL by the core; nothing is
/// filled in, `guest` is a user name like any other): a password alone is
/// `AUTH <password>`, a user an ACL login (`AUTH <user> <password>`, an
/// empty password when the URL gives none: what a `nopass` user takes);
/// neither, no AUTH.
fn credentials(url: &BrokerUrl) -> Option<Credentials> {
    let username = url.userid().filter(|u| !u.is_empty()).map(str::to_owned);
    let password = url.password().map(str::to_owned);
    match (username, password) {
        (None, None) => None,
        (username, password) => Some(Credentials {
            username,
            password: password.unwrap_or_default(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kombu_core::TransportOptions;

    fn config(url: &str, to: TransportOptions) -> Result<RedisConfig> {
        let options = ConnectionOptions::new().transport_options(to);
        let url = BrokerUrl::parse(url)?.completed(&kombu_core::url::UrlDefaults {
            hostname: Some("localhost"),
            port: Some(6379),
            ..Default::default()
        });
        RedisConfig::new(&url, &options)
    }

    #[test]
    fn vhost_is_the_database() {
        assert_eq!(
            config("redis://localhost", Default::default()).unwrap().db,
            0
        );
        assert_eq!(
            config("redis://localhost/5", Default::default())
                .unwrap()
                .db,
            5
        );
        let err = config("redis://localhost/jobs", Default::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidUrl);
        assert!(err.to_string().contains("database number"), "{err}");
    }

    #[test]
    fn defaults_are_kombus() {
        let c = config("redis://", Default::default()).unwrap();
        assert_eq!(c.visibility_timeout, Duration::from_secs(3600));
        assert_eq!(c.priority_steps, vec![0, 3, 6, 9]);
        assert_eq!(c.fanout_prefix, "/0.");
        assert!(c.fanout_patterns);
        assert_eq!(c.unacked_key, "unacked");
        assert_eq!(c.fanout_mode, FanoutMode::PubSub);
        assert_eq!(
            c.address,
            Address::Tcp {
                host: "localhost".into(),
                port: 6379
            }
        );
        assert!(c.credentials.is_none(), "no login unless one is given");
    }

    #[test]
    fn credentials_from_the_url() {
        let c = config("redis://:s3cret@h:1/2", Default::default()).unwrap();
        let creds = c.credentials.unwrap();
        assert_eq!(creds.username, None);
        assert_eq!(creds.password, "s3cret");
        assert!(!format!("{creds:?}").contains("s3cret"));
        let c = config("redis://alice:pw@h", Default::default()).unwrap();
        assert_eq!(c.credentials.unwrap().username.as_deref(), Some("alice"));
    }

    #[test]
    fn credentials_are_used_as_written() {
        // guest/guest is not a guess for "no login": it is the ACL user guest.
        let creds = config("redis://guest:guest@h/0", Default::default())
            .unwrap()
            .credentials
            .expect("the login given");
        assert_eq!(creds.username.as_deref(), Some("guest"));
        assert_eq!(creds.password, "guest");
        // A user without a password logs in as that user (a nopass user).
        let creds = config("redis://bob@h/0", Default::default())
            .unwrap()
            .credentials
            .expect("the user given");
        assert_eq!(creds.username.as_deref(), Some("bob"));
        assert_eq!(creds.password, "");
        // No login: no AUTH.
        assert!(config("redis://h/0", Default::default())
            .unwrap()
            .credentials
            .is_none());
    }

    #[test]
    fn unknown_options_are_named() {
        let err = config(
            "redis://",
            TransportOptions::new().set("visibilty_timeout", 1),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidOption);
        assert!(err.to_string().contains("visibilty_timeout"), "{err}");
    }

    #[test]
    fn the_cores_options_are_accepted() {
        let to = TransportOptions::new()
            .set("operation_timeout", 2)
            .set("unroutable_queue", "lost");
        assert!(config("redis://", to).is_ok());
    }

    #[test]
    fn options_are_read() {
        let to = TransportOptions::new()
            .set("priority_steps", "0,5")
            .set("global_keyprefix", "app:")
            .set("fanout_mode", "durable")
            .set("visibility_timeout", "2.5")
            .set("fanout_prefix", false);
        let c = config("redis+socket:///tmp/r.sock", to).unwrap();
        assert_eq!(c.priority_steps, vec![0, 5]);
        assert_eq!(c.global_keyprefix, "app:");
        assert_eq!(c.fanout_mode, FanoutMode::Durable);
        assert_eq!(c.visibility_timeout, Duration::from_millis(2500));
        assert_eq!(c.fanout_prefix, "");
        assert_eq!(c.address, Address::Unix("/tmp/r.sock".into()));
        assert!(config(
            "redis://",
            TransportOptions::new().set("priority_steps", "3,6")
        )
        .is_err());
        assert!(config("redis://", TransportOptions::new().set("fanout_mode", "x")).is_err());
    }

    #[test]
    fn sentinel_urls_need_the_master_name() {
        let err = config("sentinel://127.0.0.1:26380", TransportOptions::new()).unwrap_err();
        assert!(err.to_string().contains("master_name"), "{err}");
        let c = config(
            "sentinel://:pw@127.0.0.1:26380/2",
            TransportOptions::new().set("master_name", "mymaster"),
        )
        .unwrap();
        assert_eq!(c.master_name.as_deref(), Some("mymaster"));
        assert_eq!(c.db, 2);
        assert_eq!(
            c.address,
            Address::Tcp {
                host: "127.0.0.1".into(),
                port: 26380
            }
        );
        // Other schemes ignore it, as kombu does.
        let plain = config(
            "redis://127.0.0.1",
            TransportOptions::new().set("master_name", "mymaster"),
        )
        .unwrap();
        assert_eq!(plain.master_name, None);
    }
}
