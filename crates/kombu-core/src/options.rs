//! Connection options: the keyword arguments of kombu's `Connection`
//! ([`ConnectionOptions`]) and the free-form options of one transport
//! ([`TransportOptions`]).
//!
//! Options may come from code, from a URL's query (`amqp://h//?ssl=1`) or from
//! the command line (`--option K=V`); the last two are strings, so the typed
//! getters accept `"10"` as well as `10`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::url::BrokerUrl;

/// True for option and query keys whose values must not be shown: those that
/// contain `password`, `secret`, `token` or `key`, in any case.
pub(crate) fn is_sensitive_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "key"]
        .iter()
        .any(|word| key.contains(word))
}

/// How a value is shown in an error: masked for a sensitive key.
fn shown(key: &str, value: &Value) -> String {
    if is_sensitive_key(key) {
        "\"**\"".to_string()
    } else {
        value.to_string()
    }
}

/// The error for a bad value: `connect_timeout: "abc" is not a number of seconds`.
fn invalid_value(key: &str, value: &Value, expected: &str) -> Error {
    Error::invalid_option(format!("{key}: {} is not {expected}", shown(key, value)))
}

fn as_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_u64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Some(true),
            "0" | "false" | "no" | "off" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_f64(value: &Value) -> Option<f64> {
    let number = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    number.filter(|n| n.is_finite())
}

fn as_duration(value: &Value) -> Option<Duration> {
    as_f64(value).and_then(|secs| Duration::try_from_secs_f64(secs).ok())
}

const BOOL: &str = "a boolean (1/0, true/false, yes/no, on/off)";
const SECONDS: &str = "a number of seconds";

/// Options for one transport, by name (kombu's `transport_options`): an
/// ordered map of JSON values. Keys a transport does not know are refused by
/// [`check_known`](Self::check_known); values of keys that look secret
/// (`password`, `secret`, `token`, `key`) are shown as `**` by `Debug`.
///
/// ```
/// use kombu_core::TransportOptions;
/// use std::time::Duration;
///
/// let options = TransportOptions::new()
///     .set("visibility_timeout", 3600)
///     .set("polling_interval", "0.5")
///     .set("supports_fanout", "no");
/// assert_eq!(options.get_u64("visibility_timeout")?, Some(3600));
/// assert_eq!(options.get_duration_secs("polling_interval")?, Some(Duration::from_millis(500)));
/// assert_eq!(options.get_bool("supports_fanout")?, Some(false));
/// assert_eq!(options.get_bool("missing")?, None);
/// # Ok::<(), kombu_core::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TransportOptions(Map<String, Value>);

impl TransportOptions {
    /// No options.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// assert!(TransportOptions::new().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Builder style: with `key` set to `value`.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let options = TransportOptions::new().set("region", "eu-west-1").set("max_retries", 3);
    /// assert_eq!(options.len(), 2);
    /// ```
    pub fn set(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// Set `key` to `value`, returning the value it replaces.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let mut options = TransportOptions::new();
    /// assert_eq!(options.insert("max_retries", 3), None);
    /// assert_eq!(options.insert("max_retries", 5), Some(3.into()));
    /// ```
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        self.0.insert(key.into(), value.into())
    }

    /// Remove `key`, returning its value.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let mut options = TransportOptions::new().set("a", 1);
    /// assert_eq!(options.remove("a"), Some(1.into()));
    /// assert!(options.is_empty());
    /// ```
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.0.shift_remove(key)
    }

    /// The raw value of `key`.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let options = TransportOptions::new().set("a", true);
    /// assert_eq!(options.get("a"), Some(&true.into()));
    /// ```
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        convert: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(value) => convert(value)
                .map(Some)
                .ok_or_else(|| invalid_value(key, value, expected)),
        }
    }

    /// `key` as a string; another JSON type is an error.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let options = TransportOptions::new().set("region", "eu-west-1").set("n", 1);
    /// assert_eq!(options.get_str("region")?, Some("eu-west-1"));
    /// assert!(options.get_str("n").is_err());
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", Value::as_str)
    }

    /// `key` as a non-negative integer, from a JSON number or a string.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let options = TransportOptions::new().set("a", 7).set("b", "8").set("c", "-1");
    /// assert_eq!(options.get_u64("a")?, Some(7));
    /// assert_eq!(options.get_u64("b")?, Some(8));
    /// assert_eq!(
    ///     options.get_u64("c").unwrap_err().to_string(),
    ///     r#"invalid option: c: "-1" is not a non-negative integer"#
    /// );
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "a non-negative integer", as_u64)
    }

    /// `key` as a finite number, from a JSON number or a string.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let options = TransportOptions::new().set("a", 0.25).set("b", "1e3");
    /// assert_eq!(options.get_f64("a")?, Some(0.25));
    /// assert_eq!(options.get_f64("b")?, Some(1000.0));
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a number", as_f64)
    }

    /// `key` as a boolean: a JSON bool, `0`/`1`, or one of the strings
    /// `1`/`true`/`yes`/`on` and `0`/`false`/`no`/`off` (any case).
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let options = TransportOptions::new().set("a", "Yes").set("b", false).set("c", "maybe");
    /// assert_eq!(options.get_bool("a")?, Some(true));
    /// assert_eq!(options.get_bool("b")?, Some(false));
    /// assert!(options.get_bool("c").is_err());
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, BOOL, as_bool)
    }

    /// `key` as a duration given in seconds (a number or a string, may be
    /// fractional, not negative).
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// # use std::time::Duration;
    /// let options = TransportOptions::new().set("a", 1.5).set("b", "abc");
    /// assert_eq!(options.get_duration_secs("a")?, Some(Duration::from_millis(1500)));
    /// assert_eq!(
    ///     options.get_duration_secs("b").unwrap_err().to_string(),
    ///     r#"invalid option: b: "abc" is not a number of seconds"#
    /// );
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn get_duration_secs(&self, key: &str) -> Result<Option<Duration>> {
        self.typed(key, SECONDS, as_duration)
    }

    /// The keys, in order.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let options = TransportOptions::new().set("b", 1).set("a", 2);
    /// assert_eq!(options.keys().collect::<Vec<_>>(), ["b", "a"]);
    /// ```
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The options, in order.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let options = TransportOptions::new().set("a", 1);
    /// assert_eq!(options.iter().next(), Some(("a", &1.into())));
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// How many options there are.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// assert_eq!(TransportOptions::new().set("a", 1).len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there is no option.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// assert!(TransportOptions::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Refuse keys that `transport` does not know, naming every unknown key
    /// and listing the known ones.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let options = TransportOptions::new().set("visibility_timeout", 60).set("polling", 1);
    /// assert!(options.check_known(&["visibility_timeout", "polling", "region"], "sqs").is_ok());
    /// let err = options.check_known(&["visibility_timeout", "region"], "sqs").unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     r#"invalid option: unknown transport option for sqs: "polling" (known: "visibility_timeout", "region")"#
    /// );
    /// ```
    pub fn check_known(&self, known: &[&str], transport: &str) -> Result<()> {
        let unknown: Vec<&str> = self.keys().filter(|key| !known.contains(key)).collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let quoted = |keys: &[&str]| {
            let keys: Vec<String> = keys.iter().map(|key| format!("{key:?}")).collect();
            keys.join(", ")
        };
        let known = match known {
            [] => "none".to_string(),
            known => quoted(known),
        };
        Err(Error::invalid_option(format!(
            "unknown transport option{} for {transport}: {} (known: {known})",
            if unknown.len() == 1 { "" } else { "s" },
            quoted(&unknown),
        )))
    }

    /// Copy every option of `other` into `self`; `other` wins.
    ///
    /// ```
    /// # use kombu_core::TransportOptions;
    /// let mut options = TransportOptions::new().set("a", 1).set("b", 2);
    /// options.merge_from(&TransportOptions::new().set("b", 3).set("c", 4));
    /// assert_eq!(options, TransportOptions::new().set("a", 1).set("b", 3).set("c", 4));
    /// ```
    pub fn merge_from(&mut self, other: &TransportOptions) {
        for (key, value) in &other.0 {
            self.0.insert(key.clone(), value.clone());
        }
    }
}

/// The options, with the values of secret-looking keys shown as `"**"`.
impl fmt::Debug for TransportOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let masked = Value::from("**");
        f.debug_map()
            .entries(self.0.iter().map(|(key, value)| {
                let value = if is_sensitive_key(key) {
                    &masked
                } else {
                    value
                };
                (key, value)
            }))
            .finish()
    }
}

/// TLS settings of a connection (kombu's `ssl` keyword: `True` or a dict).
///
/// ```
/// use kombu_core::SslOptions;
/// use std::path::PathBuf;
///
/// assert_eq!(SslOptions::default(), SslOptions::Disabled);
/// let ssl = SslOptions::Custom {
///     ca_certs: Some(PathBuf::from("/etc/ssl/ca.pem")),
///     certfile: None,
///     keyfile: None,
///     verify: true,
///     check_hostname: true,
/// };
/// assert!(ssl.is_enabled());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslOptions {
    /// Plain TCP.
    #[default]
    Disabled,
    /// TLS with the system's root certificates, verifying the server.
    Enabled,
    /// TLS with explicit files and checks.
    Custom {
        /// CA bundle to verify the server with (system roots when `None`).
        ca_certs: Option<PathBuf>,
        /// Client certificate, for mutual TLS.
        certfile: Option<PathBuf>,
        /// Private key of the client certificate.
        keyfile: Option<PathBuf>,
        /// Verify the server's certificate (`ssl_cert_reqs=CERT_REQUIRED`).
        verify: bool,
        /// Check that the certificate names the host.
        check_hostname: bool,
    },
}

impl SslOptions {
    /// True unless [`SslOptions::Disabled`].
    ///
    /// ```
    /// # use kombu_core::SslOptions;
    /// assert!(SslOptions::Enabled.is_enabled());
    /// assert!(!SslOptions::Disabled.is_enabled());
    /// ```
    pub fn is_enabled(&self) -> bool {
        !matches!(self, SslOptions::Disabled)
    }
}

/// In which order the URLs of a failover list are tried (kombu's
/// `failover_strategy`).
///
/// ```
/// use kombu_core::FailoverStrategy;
///
/// assert_eq!(FailoverStrategy::default(), FailoverStrategy::RoundRobin);
/// assert_eq!("shuffle".parse::<FailoverStrategy>()?, FailoverStrategy::Shuffle);
/// assert_eq!(FailoverStrategy::RoundRobin.to_string(), "round-robin");
/// # Ok::<(), kombu_core::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailoverStrategy {
    /// In the given order, starting with the last URL that worked and
    /// going on with the next one (`round-robin`).
    #[default]
    RoundRobin,
    /// In a new random order on each attempt (`shuffle`).
    Shuffle,
    /// In the order a function of yours chooses (kombu's callable
    /// `failover_strategy`): see [`FailoverStrategy::custom`].
    Custom(CustomFailover),
}

/// The order function of [`FailoverStrategy::Custom`]: given the URLs and
/// the index of the last one that worked, the indexes to try, in order.
pub type FailoverOrderFn = dyn Fn(&[crate::url::BrokerUrl], usize) -> Vec<usize> + Send + Sync;

/// A user's failover order (compared by identity).
#[derive(Clone)]
pub struct CustomFailover(pub std::sync::Arc<FailoverOrderFn>);

impl fmt::Debug for CustomFailover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CustomFailover(..)")
    }
}

impl PartialEq for CustomFailover {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for CustomFailover {}

impl FailoverStrategy {
    /// kombu's name: `round-robin` or `shuffle`.
    ///
    /// ```
    /// # use kombu_core::FailoverStrategy;
    /// assert_eq!(FailoverStrategy::Shuffle.as_str(), "shuffle");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            FailoverStrategy::RoundRobin => "round-robin",
            FailoverStrategy::Shuffle => "shuffle",
            FailoverStrategy::Custom(_) => "custom",
        }
    }

    /// Try the URLs in the order `order` returns: it gets the URLs and the
    /// index of the last one that worked (0 at first) and returns indexes
    /// (out-of-range ones are ignored; an empty list means round-robin).
    ///
    /// ```
    /// use kombu_core::FailoverStrategy;
    /// // Always the first URL first, then the others in reverse.
    /// let strategy = FailoverStrategy::custom(|urls, _last| {
    ///     let mut order: Vec<usize> = (1..urls.len()).rev().collect();
    ///     order.insert(0, 0);
    ///     order
    /// });
    /// assert_eq!(strategy.as_str(), "custom");
    /// ```
    pub fn custom(
        order: impl Fn(&[crate::url::BrokerUrl], usize) -> Vec<usize> + Send + Sync + 'static,
    ) -> Self {
        FailoverStrategy::Custom(CustomFailover(std::sync::Arc::new(order)))
    }

    /// The indexes of `urls` to try, in order, when `last` worked last.
    pub fn order(&self, urls: &[crate::url::BrokerUrl], last: usize) -> Vec<usize> {
        let count = urls.len();
        let round_robin = || (0..count).map(|step| (last + step) % count).collect();
        match self {
            FailoverStrategy::RoundRobin => round_robin(),
            FailoverStrategy::Shuffle => {
                let mut order: Vec<usize> = (0..count).collect();
                fastrand::shuffle(&mut order);
                order
            }
            FailoverStrategy::Custom(custom) => {
                let order: Vec<usize> = (custom.0)(urls, last)
                    .into_iter()
                    .filter(|index| *index < count)
                    .collect();
                if order.is_empty() {
                    round_robin()
                } else {
                    order
                }
            }
        }
    }
}

impl fmt::Display for FailoverStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FailoverStrategy {
    type Err = Error;

    /// `round-robin` (or `round_robin`) and `shuffle`, in any case.
    ///
    /// ```
    /// # use kombu_core::FailoverStrategy;
    /// assert_eq!("Round_Robin".parse::<FailoverStrategy>()?, FailoverStrategy::RoundRobin);
    /// assert!("random".parse::<FailoverStrategy>().is_err());
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    fn from_str(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "round-robin" => Ok(FailoverStrategy::RoundRobin),
            "shuffle" => Ok(FailoverStrategy::Shuffle),
            _ => Err(invalid_value(
                "failover_strategy",
                &Value::from(name),
                "round-robin or shuffle",
            )),
        }
    }
}

/// The keyword arguments of a connection (the reference's "Keyword
/// arguments"): defaults for what the URL leaves out, and settings a URL
/// cannot hold. Values in the URL win over these.
///
/// ```
/// use kombu_core::{ConnectionOptions, SslOptions, TransportOptions};
/// use std::time::Duration;
///
/// let options = ConnectionOptions::new()
///     .hostname("rabbit.example.com")
///     .userid("app")
///     .password("s3cret")
///     .ssl(SslOptions::Enabled)
///     .heartbeat(Duration::from_secs(30))
///     .transport_option("confirm_publish", true);
/// assert_eq!(options.connect_timeout, Some(Duration::from_secs(5)));
/// assert!(!format!("{options:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct ConnectionOptions {
    /// Default hostname if not provided in the URL.
    pub hostname: Option<String>,
    /// Default user name if not provided in the URL.
    pub userid: Option<String>,
    /// Default password if not provided in the URL (masked in `Debug`).
    pub password: Option<String>,
    /// Default virtual host if not provided in the URL.
    pub virtual_host: Option<String>,
    /// Default port if not provided in the URL.
    pub port: Option<u16>,
    /// Transport (a registered scheme or an alias) when there is no URL.
    pub transport: Option<String>,
    /// TLS settings; default [`SslOptions::Disabled`].
    pub ssl: SslOptions,
    /// Insist on connecting to this server (old AMQP; default `false`).
    pub insist: bool,
    /// Timeout for connecting to the server; default 5 seconds (kombu's `Connection(connect_timeout=5)`).
    pub connect_timeout: Option<Duration>,
    /// Heartbeat interval; `None` (the default) sends none.
    pub heartbeat: Option<Duration>,
    /// Order in which failover URLs are tried.
    pub failover_strategy: FailoverStrategy,
    /// Options for the transport (kombu's `transport_options`).
    pub transport_options: TransportOptions,
    /// SASL login method (AMQP), e.g. `AMQPLAIN` or `PLAIN`.
    pub login_method: Option<String>,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions {
            hostname: None,
            userid: None,
            password: None,
            virtual_host: None,
            port: None,
            transport: None,
            ssl: SslOptions::Disabled,
            insist: false,
            connect_timeout: Some(Duration::from_secs(5)),
            heartbeat: None,
            failover_strategy: FailoverStrategy::RoundRobin,
            transport_options: TransportOptions::new(),
            login_method: None,
        }
    }
}

/// All fields, with the password shown as `"**"`.
impl fmt::Debug for ConnectionOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionOptions")
            .field("hostname", &self.hostname)
            .field("userid", &self.userid)
            .field("password", &self.password.as_ref().map(|_| "**"))
            .field("virtual_host", &self.virtual_host)
            .field("port", &self.port)
            .field("transport", &self.transport)
            .field("ssl", &self.ssl)
            .field("insist", &self.insist)
            .field("connect_timeout", &self.connect_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("failover_strategy", &self.failover_strategy)
            .field("transport_options", &self.transport_options)
            .field("login_method", &self.login_method)
            .finish()
    }
}

/// The query keys [`ConnectionOptions::apply_query`] turns into SSL settings.
const SSL_FILE_KEYS: [&str; 5] = [
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
];

impl ConnectionOptions {
    /// kombu's defaults: no keyword given, `connect_timeout` 5 seconds.
    ///
    /// ```
    /// # use kombu_core::ConnectionOptions;
    /// let options = ConnectionOptions::new();
    /// assert_eq!(options.hostname, None);
    /// assert!(!options.insist);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Default hostname.
    ///
    /// ```
    /// # use kombu_core::ConnectionOptions;
    /// assert_eq!(ConnectionOptions::new().hostname("h").hostname.as_deref(), Some("h"));
    /// ```
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = Some(hostname.into());
        self
    }

    /// Default user name.
    ///
    /// ```
    /// # use kombu_core::ConnectionOptions;
    /// assert_eq!(ConnectionOptions::new().userid("u").userid.as_deref(), Some("u"));
    /// ```
    pub fn userid(mut self, userid: impl Into<String>) -> Self {
        self.userid = Some(userid.into());
        self
    }

    /// Default password.
    ///
    /// ```
    /// # use kombu_core::ConnectionOptions;
    /// assert_eq!(ConnectionOptions::new().password("p").password.as_deref(), Some("p"));
    /// ```
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Default virtual host.
    ///
    /// ```
    /// # use kombu_core::ConnectionOptions;
    /// assert_eq!(ConnectionOptions::new().virtual_host("/").virtual_host.as_deref(), Some("/"));
    /// ```
    pub fn virtual_host(mut self, virtual_host: impl Into<String>) -> Self {
        self.virtual_host = Some(virtual_host.into());
        self
    }

    /// Default port.
    ///
    /// ```
    /// # use kombu_core::ConnectionOptions;
    /// assert_eq!(ConnectionOptions::new().port(5672).port, Some(5672));
    /// ```
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Transport to use when there is no URL: a scheme or an alias.
    ///
    /// ```
    /// # use kombu_core::ConnectionOptions;
    /// assert_eq!(ConnectionOptions::new().transport("memory").transport.as_deref(), Some("memory"));
    /// ```
    pub fn transport(mut self, transport: impl Into<String>) -> Self {
        self.transport = Some(transport.into());
        self
    }

    /// TLS settings.
    ///
    /// ```
    /// # use kombu_core::{ConnectionOptions, SslOptions};
    /// assert!(ConnectionOptions::new().ssl(SslOptions::Enabled).ssl.is_enabled());
    /// ```
    pub fn ssl(mut self, ssl: SslOptions) -> Self {
        self.ssl = ssl;
        self
    }

    /// Insist on connecting to this server.
    ///
    /// ```
    /// # use kombu_core::ConnectionOptions;
    /// assert!(ConnectionOptions::new().insist(true).insist);
    /// ```
    pub fn insist(mut self, insist: bool) -> Self {
        self.insist = insist;
        self
    }

    /// Connect timeout; `None` waits as long as the system does.
    ///
    /// ```
    /// # use kombu_core::ConnectionOptions;
    /// # use std::time::Duration;
    /// let options = ConnectionOptions::new().connect_timeout(Duration::from_secs(1));
    /// assert_eq!(options.connect_timeout, Some(Duration::from_secs(1)));
    /// assert_eq!(options.connect_timeout(None).connect_timeout, None);
    /// ```
    pub fn connect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.connect_timeout = timeout.into();
        self
    }

    /// Heartbeat interval; `None` or zero sends none.
    ///
    /// ```
    /// # use kombu_core::ConnectionOptions;
    /// # use std::time::Duration;
    /// let options = ConnectionOptions::new().heartbeat(Duration::from_secs(10));
    /// assert_eq!(options.heartbeat, Some(Duration::from_secs(10)));
    /// assert_eq!(options.heartbeat(Duration::ZERO).heartbeat, None);
    /// ```
    pub fn heartbeat(mut self, heartbeat: impl Into<Option<Duration>>) -> Self {
        self.heartbeat = heartbeat.into().filter(|h| !h.is_zero());
        self
    }

    /// Order in which failover URLs are tried.
    ///
    /// ```
    /// # use kombu_core::{ConnectionOptions, FailoverStrategy};
    /// let options = ConnectionOptions::new().failover_strategy(FailoverStrategy::Shuffle);
    /// assert_eq!(options.failover_strategy, FailoverStrategy::Shuffle);
    /// ```
    pub fn failover_strategy(mut self, strategy: FailoverStrategy) -> Self {
        self.failover_strategy = strategy;
        self
    }

    /// Replace all transport options.
    ///
    /// ```
    /// # use kombu_core::{ConnectionOptions, TransportOptions};
    /// let options = ConnectionOptions::new().transport_options(TransportOptions::new().set("a", 1));
    /// assert_eq!(options.transport_options.len(), 1);
    /// ```
    pub fn transport_options(mut self, options: TransportOptions) -> Self {
        self.transport_options = options;
        self
    }

    /// Set one transport option.
    ///
    /// ```
    /// # use kombu_core::ConnectionOptions;
    /// let options = ConnectionOptions::new().transport_option("visibility_timeout", 3600);
    /// assert_eq!(options.transport_options.get_u64("visibility_timeout")?, Some(3600));
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn transport_option(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.transport_options.insert(key, value);
        self
    }

    /// SASL login method (AMQP).
    ///
    /// ```
    /// # use kombu_core::ConnectionOptions;
    /// let options = ConnectionOptions::new().login_method("PLAIN");
    /// assert_eq!(options.login_method.as_deref(), Some("PLAIN"));
    /// ```
    pub fn login_method(mut self, method: impl Into<String>) -> Self {
        self.login_method = Some(method.into());
        self
    }

    /// Take the options in `url`'s query; they win over what is set.
    ///
    /// Typed keys: `ssl` (a boolean), `ssl_ca_certs`, `ssl_certfile`,
    /// `ssl_keyfile`, `ssl_cert_reqs` (`CERT_NONE`, `CERT_OPTIONAL`,
    /// `CERT_REQUIRED`), `ssl_check_hostname` (any of these makes
    /// [`SslOptions::Custom`]), `connect_timeout` and `heartbeat` (seconds;
    /// a zero heartbeat is none), `insist`, `login_method` and
    /// `failover_strategy`. Every other key becomes a string transport option.
    ///
    /// ```
    /// use kombu_core::{BrokerUrl, ConnectionOptions, SslOptions};
    /// use std::time::Duration;
    ///
    /// let url = BrokerUrl::parse("amqp://localhost//?ssl=1&heartbeat=2.5&confirm_publish=yes")?;
    /// let mut options = ConnectionOptions::new();
    /// options.apply_query(&url)?;
    /// assert_eq!(options.ssl, SslOptions::Enabled);
    /// assert_eq!(options.heartbeat, Some(Duration::from_millis(2500)));
    /// assert_eq!(options.transport_options.get_bool("confirm_publish")?, Some(true));
    ///
    /// let url = BrokerUrl::parse("amqp://localhost//?connect_timeout=abc")?;
    /// assert_eq!(
    ///     options.apply_query(&url).unwrap_err().to_string(),
    ///     r#"invalid option: connect_timeout: "abc" is not a number of seconds"#
    /// );
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn apply_query(&mut self, url: &BrokerUrl) -> Result<()> {
        let seconds = |key: &str, value: &str| {
            let value = Value::from(value);
            as_duration(&value).ok_or_else(|| invalid_value(key, &value, SECONDS))
        };
        let bool_value = |key: &str, value: &str| {
            let value = Value::from(value);
            as_bool(&value).ok_or_else(|| invalid_value(key, &value, BOOL))
        };
        for (key, value) in url.query() {
            match key.as_str() {
                "ssl" => {
                    if !bool_value(key, value)? {
                        self.ssl = SslOptions::Disabled;
                    } else if !self.ssl.is_enabled() {
                        self.ssl = SslOptions::Enabled;
                    }
                }
                key if SSL_FILE_KEYS.contains(&key) => {}
                "connect_timeout" => {
                    self.connect_timeout = Some(seconds(key, value)?);
                }
                "heartbeat" => {
                    self.heartbeat = Some(seconds(key, value)?).filter(|h| !h.is_zero());
                }
                "insist" => self.insist = bool_value(key, value)?,
                "login_method" => self.login_method = Some(value.clone()),
                "failover_strategy" => self.failover_strategy = value.parse()?,
                _ => {
                    self.transport_options.insert(key.clone(), value.as_str());
                }
            }
        }
        self.apply_ssl_query(url)
    }

    /// The `ssl_*` query keys, after `ssl` itself.
    fn apply_ssl_query(&mut self, url: &BrokerUrl) -> Result<()> {
        if !SSL_FILE_KEYS
            .iter()
            .any(|key| url.query_value(key).is_some())
        {
            return Ok(());
        }
        if url.query_value("ssl").is_some() && !self.ssl.is_enabled() {
            return Err(Error::invalid_option(
                "ssl: SSL is switched off but ssl_* options are given",
            ));
        }
        let (mut ca_certs, mut certfile, mut keyfile, mut verify, mut check_hostname) =
            match &self.ssl {
                SslOptions::Custom {
                    ca_certs,
                    certfile,
                    keyfile,
                    verify,
                    check_hostname,
                } => (
                    ca_certs.clone(),
                    certfile.clone(),
                    keyfile.clone(),
                    *verify,
                    *check_hostname,
                ),
                _ => (None, None, None, true, true),
            };
        let path = |key| url.query_value(key).map(PathBuf::from);
        ca_certs = path("ssl_ca_certs").or(ca_certs);
        certfile = path("ssl_certfile").or(certfile);
        keyfile = path("ssl_keyfile").or(keyfile);
        if let Some(reqs) = url.query_value("ssl_cert_reqs") {
            let reqs_upper = reqs.trim().to_ascii_uppercase();
            verify = match reqs_upper.strip_prefix("CERT_").unwrap_or(&reqs_upper) {
                "NONE" => false,
                "OPTIONAL" | "REQUIRED" => true,
                _ => {
                    return Err(invalid_value(
                        "ssl_cert_reqs",
                        &Value::from(reqs),
                        "one of CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED",
                    ))
                }
            };
            check_hostname = verify;
        }
        if let Some(check) = url.query_value("ssl_check_hostname") {
            check_hostname = as_bool(&Value::from(check))
                .ok_or_else(|| invalid_value("ssl_check_hostname", &Value::from(check), BOOL))?;
        }
        self.ssl = SslOptions::Custom {
            ca_certs,
            certfile,
            keyfile,
            verify,
            check_hostname,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use serde_json::json;

    fn options_from(query: &str) -> Result<ConnectionOptions> {
        let url = BrokerUrl::parse(&format!("amqp://h//?{query}")).unwrap();
        let mut options = ConnectionOptions::new();
        options.apply_query(&url)?;
        Ok(options)
    }

    fn error_of(result: Result<impl fmt::Debug>) -> String {
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidOption);
        err.message().to_string()
    }

    #[test]
    fn typed_getters_accept_json_and_strings() {
        let options = TransportOptions::new()
            .set("n", 5)
            .set("ns", " 6 ")
            .set("f", 0.5)
            .set("fs", "2.25")
            .set("b", true)
            .set("bs", "OFF")
            .set("b1", 1)
            .set("s", "text");
        assert_eq!(options.get_u64("n").unwrap(), Some(5));
        assert_eq!(options.get_u64("ns").unwrap(), Some(6));
        assert_eq!(options.get_f64("f").unwrap(), Some(0.5));
        assert_eq!(options.get_f64("n").unwrap(), Some(5.0));
        assert_eq!(options.get_f64("fs").unwrap(), Some(2.25));
        assert_eq!(options.get_bool("b").unwrap(), Some(true));
        assert_eq!(options.get_bool("bs").unwrap(), Some(false));
        assert_eq!(options.get_bool("b1").unwrap(), Some(true));
        assert_eq!(options.get_str("s").unwrap(), Some("text"));
        assert_eq!(
            options.get_duration_secs("fs").unwrap(),
            Some(Duration::from_millis(2250))
        );
        assert_eq!(options.get_u64("absent").unwrap(), None);
    }

    #[test]
    fn typed_getters_name_the_key_and_value() {
        let options = TransportOptions::new()
            .set("f", 1.5)
            .set("neg", -1)
            .set("inf", "inf")
            .set("b", "maybe")
            .set("n", 3)
            .set("api_token", "abc");
        assert_eq!(
            error_of(options.get_u64("f")),
            "f: 1.5 is not a non-negative integer"
        );
        assert_eq!(
            error_of(options.get_duration_secs("neg")),
            "neg: -1 is not a number of seconds"
        );
        assert_eq!(
            error_of(options.get_f64("inf")),
            r#"inf: "inf" is not a number"#
        );
        assert!(error_of(options.get_bool("b")).starts_with(r#"b: "maybe" is not a boolean"#));
        assert_eq!(error_of(options.get_str("n")), "n: 3 is not a string");
        assert_eq!(
            error_of(options.get_u64("api_token")),
            r#"api_token: "**" is not a non-negative integer"#
        );
    }

    #[test]
    fn check_known_lists_unknown_and_known_keys() {
        let options = TransportOptions::new().set("a", 1).set("x", 2).set("y", 3);
        assert!(options.check_known(&["a", "x", "y", "z"], "redis").is_ok());
        assert_eq!(
            error_of(options.check_known(&["a"], "redis")),
            r#"unknown transport options for redis: "x", "y" (known: "a")"#
        );
        assert_eq!(
            error_of(options.check_known(&[], "memory")),
            r#"unknown transport options for memory: "a", "x", "y" (known: none)"#
        );
    }

    #[test]
    fn merge_serde_and_order() {
        let mut options = TransportOptions::new().set("b", 1).set("a", json!([1, 2]));
        options.merge_from(
            &TransportOptions::new()
                .set("a", "new")
                .set("c", json!({"k": 1})),
        );
        assert_eq!(options.keys().collect::<Vec<_>>(), ["b", "a", "c"]);
        assert_eq!(options.get("a"), Some(&json!("new")));
        let text = serde_json::to_string(&options).unwrap();
        assert_eq!(text, r#"{"b":1,"a":"new","c":{"k":1}}"#);
        let back: TransportOptions = serde_json::from_str(&text).unwrap();
        assert_eq!(back, options);
        assert_eq!(options.remove("b"), Some(json!(1)));
        assert_eq!(options.len(), 2);
    }

    #[test]
    fn debug_masks_secret_looking_values() {
        let options = TransportOptions::new()
            .set("sasl_Password", "pw1x")
            .set("aws_secret", "pw2x")
            .set("Token", "pw3x")
            .set("access_key_id", "pw4x")
            .set("region", "eu-west-1");
        let shown = format!("{options:?}");
        assert!(!shown.contains("pw"), "{shown}");
        assert!(
            shown.contains(r#""region": String("eu-west-1")"#),
            "{shown}"
        );

        let connection = ConnectionOptions::new()
            .password("hunter22")
            .transport_options(options);
        let shown = format!("{connection:?}");
        assert!(
            !shown.contains("hunter22") && !shown.contains("pw"),
            "{shown}"
        );
        assert!(shown.contains(r#"password: Some("**")"#), "{shown}");
    }

    #[test]
    fn defaults_and_builder() {
        let options = ConnectionOptions::default();
        assert_eq!(options.connect_timeout, Some(Duration::from_secs(5)));
        assert_eq!(options.ssl, SslOptions::Disabled);
        assert_eq!(options.failover_strategy, FailoverStrategy::RoundRobin);
        let options = ConnectionOptions::new()
            .hostname("h")
            .userid("u")
            .password("p")
            .virtual_host("v")
            .port(1)
            .transport("redis")
            .insist(true)
            .connect_timeout(None)
            .heartbeat(Duration::from_secs(3))
            .login_method("PLAIN")
            .failover_strategy(FailoverStrategy::Shuffle)
            .transport_option("k", 1);
        assert_eq!(options.hostname.as_deref(), Some("h"));
        assert_eq!(options.port, Some(1));
        assert_eq!(options.transport.as_deref(), Some("redis"));
        assert!(options.insist);
        assert_eq!(options.connect_timeout, None);
        assert_eq!(options.heartbeat, Some(Duration::from_secs(3)));
        assert_eq!(options.transport_options.get_u64("k").unwrap(), Some(1));
    }

    #[test]
    fn query_gives_typed_options() {
        let options = options_from(
            "connect_timeout=0.5&heartbeat=0&insist=yes&login_method=PLAIN\
             &failover_strategy=shuffle&visibility_timeout=60",
        )
        .unwrap();
        assert_eq!(options.connect_timeout, Some(Duration::from_millis(500)));
        assert_eq!(options.heartbeat, None);
        assert!(options.insist);
        assert_eq!(options.login_method.as_deref(), Some("PLAIN"));
        assert_eq!(options.failover_strategy, FailoverStrategy::Shuffle);
        assert_eq!(
            options.transport_options.get("visibility_timeout"),
            Some(&json!("60"))
        );
        assert_eq!(options.transport_options.len(), 1);
    }

    #[test]
    fn query_wins_over_keywords() {
        let url = BrokerUrl::parse("amqp://h//?region=us&heartbeat=5").unwrap();
        let mut options = ConnectionOptions::new()
            .heartbeat(Duration::from_secs(60))
            .transport_option("region", "eu")
            .transport_option("other", 1);
        options.apply_query(&url).unwrap();
        assert_eq!(options.heartbeat, Some(Duration::from_secs(5)));
        assert_eq!(
            options.transport_options.get_str("region").unwrap(),
            Some("us")
        );
        assert_eq!(options.transport_options.get_u64("other").unwrap(), Some(1));
    }

    #[test]
    fn query_ssl_settings() {
        assert_eq!(options_from("ssl=1").unwrap().ssl, SslOptions::Enabled);
        assert_eq!(options_from("ssl=false").unwrap().ssl, SslOptions::Disabled);
        assert_eq!(
            options_from("ssl_cert_reqs=CERT_NONE&ssl_ca_certs=/ca.pem&ssl=1")
                .unwrap()
                .ssl,
            SslOptions::Custom {
                ca_certs: Some(PathBuf::from("/ca.pem")),
                certfile: None,
                keyfile: None,
                verify: false,
                check_hostname: false,
            }
        );
        assert_eq!(
            options_from("ssl_certfile=c.pem&ssl_keyfile=k.pem&ssl_check_hostname=no")
                .unwrap()
                .ssl,
            SslOptions::Custom {
                ca_certs: None,
                certfile: Some(PathBuf::from("c.pem")),
                keyfile: Some(PathBuf::from("k.pem")),
                verify: true,
                check_hostname: false,
            }
        );
        // `ssl=1` keeps custom settings given by keyword.
        let custom = SslOptions::Custom {
            ca_certs: Some(PathBuf::from("/kw.pem")),
            certfile: None,
            keyfile: None,
            verify: true,
            check_hostname: true,
        };
        let url = BrokerUrl::parse("amqp://h//?ssl=on").unwrap();
        let mut options = ConnectionOptions::new().ssl(custom.clone());
        options.apply_query(&url).unwrap();
        assert_eq!(options.ssl, custom);
    }

    #[test]
    fn query_errors_name_the_key() {
        for (query, message) in [
            (
                "connect_timeout=abc",
                r#"connect_timeout: "abc" is not a number of seconds"#,
            ),
            (
                "heartbeat=-1",
                r#"heartbeat: "-1" is not a number of seconds"#,
            ),
            (
                "ssl=maybe",
                r#"ssl: "maybe" is not a boolean (1/0, true/false, yes/no, on/off)"#,
            ),
            (
                "insist=2",
                r#"insist: "2" is not a boolean (1/0, true/false, yes/no, on/off)"#,
            ),
            (
                "failover_strategy=random",
                r#"failover_strategy: "random" is not round-robin or shuffle"#,
            ),
            (
                "ssl_cert_reqs=SOME",
                r#"ssl_cert_reqs: "SOME" is not one of CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED"#,
            ),
            (
                "ssl_check_hostname=x",
                r#"ssl_check_hostname: "x" is not a boolean (1/0, true/false, yes/no, on/off)"#,
            ),
            (
                "ssl=0&ssl_ca_certs=/ca.pem",
                "ssl: SSL is switched off but ssl_* options are given",
            ),
        ] {
            assert_eq!(error_of(options_from(query)), message, "{query}");
        }
    }
}
