//! [`ConnectionOptions`]: the keyword arguments of a connection, and their
//! builder methods.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use super::{FailoverStrategy, SslOptions, TransportOptions};

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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
