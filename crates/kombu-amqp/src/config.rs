//! From a kombu URL and options to what lapin connects with.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kombu_core::{BrokerUrl, ConnectionOptions, Error, ErrorKind, Result, SslOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, LongString};
use lapin::uri::{
    AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo, SASLMechanism,
};
use lapin::ConnectionProperties;

use crate::delayed::DelayQueueType;
use crate::field_table::{short_string, to_amqp_value};

/// Transport options `amqp://` understands.
pub const KNOWN_OPTIONS: &[&str] = &[
    "confirm_publish",
    "frame_max",
    "channel_max",
    "client_properties",
    "connection_name",
    "ack_coalescing",
    "delayed_delivery_queue_type",
    "quarantine",
];

/// Everything needed to open one connection.
pub(crate) struct ConnectConfig {
    /// Holds the password: never print it (its `Debug` would).
    pub(crate) uri: AMQPUri,
    pub(crate) properties: ConnectionProperties,
    pub(crate) tls: TlsSetup,
    pub(crate) settings: Settings,
    /// `host:port`, for messages.
    pub(crate) endpoint: String,
    pub(crate) connect_timeout: Option<Duration>,
}

/// How an `amqps://` connection sets up TLS.
pub(crate) enum TlsSetup {
    /// lapin's rustls setup: the server verified with the CA bundle (or
    /// the system's roots) and its name checked; a client certificate
    /// when given.
    Verified(OwnedTLSConfig),
    /// `ssl_cert_reqs=CERT_NONE`: a rustls client that accepts any server
    /// certificate (a warning is logged on each connect).
    Unverified(Arc<rustls::ClientConfig>),
}

/// Per-connection behaviour of channels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Publishes wait for the broker's confirm.
    pub(crate) confirm_publish: bool,
    /// In-order acks are sent as multiple-acks (see `acks.rs`).
    pub(crate) ack_coalescing: bool,
    /// The type of the native delayed delivery queues.
    pub(crate) delay_queue_type: DelayQueueType,
    /// A message rejected without requeue from a queue this connection
    /// declared without a dead-letter exchange goes to `<queue>.quarantine`.
    pub(crate) quarantine: bool,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOption, message)
}

impl ConnectConfig {
    pub(crate) fn new(
        url: &BrokerUrl,
        options: &ConnectionOptions,
        tls_scheme: bool,
    ) -> Result<Self> {
        let transport_options = &options.transport_options;
        transport_options.check_known(KNOWN_OPTIONS, "amqp")?;

        let host = url.hostname().unwrap_or("localhost").to_owned();
        let tls_on = tls_scheme || options.ssl.is_enabled();
        let port = url.port().unwrap_or(if tls_on { 5671 } else { 5672 });
        let endpoint = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };

        let mut query = AMQPQueryString::default();
        if let Some(frame_max) = transport_options.get_u64("frame_max")? {
            query.frame_max = Some(u32::try_from(frame_max).map_err(|_| {
                invalid(format!("frame_max: {frame_max} is larger than 4294967295"))
            })?);
        }
        if let Some(channel_max) = transport_options.get_u64("channel_max")? {
            query.channel_max = Some(u16::try_from(channel_max).map_err(|_| {
                invalid(format!("channel_max: {channel_max} is larger than 65535"))
            })?);
        }
        if let Some(heartbeat) = options.heartbeat {
            // AMQP counts whole seconds; round a fraction up, never to 0 (off).
            let secs = heartbeat.as_secs_f64().ceil().max(1.0);
            query.heartbeat = Some(secs.min(f64::from(u16::MAX)) as u16);
        }
        if let Some(timeout) = options.connect_timeout {
            query.connection_timeout = Some(timeout.as_millis().max(1) as u64);
        }
        query.auth_mechanism = Some(match options.login_method.as_deref() {
            None => SASLMechanism::Plain,
            Some(method) => match method.trim().to_ascii_uppercase().as_str() {
                "PLAIN" => SASLMechanism::Plain,
                "AMQPLAIN" => SASLMechanism::AMQPlain,
                "EXTERNAL" => SASLMechanism::External,
                "ANONYMOUS" => SASLMechanism::Anonymous,
                other => {
                    return Err(invalid(format!(
                        "login_method: {other:?} is not one of PLAIN, AMQPLAIN, EXTERNAL, ANONYMOUS"
                    )))
                }
            },
        });

        let uri = AMQPUri {
            scheme: if tls_on {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: url.userid().unwrap_or("guest").to_owned(),
                    password: url.password().unwrap_or("guest").to_owned(),
                },
                host,
                port,
            },
            vhost: url.virtual_host().unwrap_or("/").to_owned(),
            query,
        };

        let mut properties = ConnectionProperties::default()
            .with_client_property("product".into(), LongString::from("kombu-rs"))
            .with_client_property(
                "version".into(),
                LongString::from(env!("CARGO_PKG_VERSION")),
            );
        if let Some(name) = transport_options.get_str("connection_name")? {
            properties = properties.with_connection_name(LongString::from(name));
        }
        if let Some(extra) = transport_options.get("client_properties") {
            let map = extra
                .as_object()
                .ok_or_else(|| invalid("client_properties: expected an object of name -> value"))?;
            for (key, value) in map {
                let key = short_string("a client property name", key)?;
                properties = match to_amqp_value(value)? {
                    AMQPValue::LongString(s) => properties.with_client_property(key, s),
                    _ => properties.with_client_property(key, LongString::from(value.to_string())),
                };
            }
        }

        let settings = Settings {
            confirm_publish: transport_options
                .get_bool("confirm_publish")?
                .unwrap_or(false),
            ack_coalescing: transport_options
                .get_bool("ack_coalescing")?
                .unwrap_or(true),
            delay_queue_type: transport_options
                .get_str("delayed_delivery_queue_type")?
                .map(DelayQueueType::parse)
                .transpose()?
                .unwrap_or_default(),
            quarantine: transport_options.get_bool("quarantine")?.unwrap_or(true),
        };
        Ok(ConnectConfig {
            uri,
            properties,
            tls: tls_config(&options.ssl)?,
            settings,
            endpoint,
            connect_timeout: options.connect_timeout,
        })
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|err| {
        invalid(format!("ssl {what}: cannot read {}: {err}", path.display())).with_source(err)
    })
}

/// The TLS settings: lapin's rustls stack with a CA bundle and a client
/// certificate with its key (PEM); or, for `ssl_cert_reqs=CERT_NONE`, a
/// rustls client that verifies nothing. A verified server's name is
/// always checked: `ssl_check_hostname=false` alone is refused.
fn tls_config(ssl: &SslOptions) -> Result<TlsSetup> {
    let mut config = OwnedTLSConfig::default();
    if let SslOptions::Custom {
        ca_certs,
        certfile,
        keyfile,
        verify,
        check_hostname,
    } = ssl
    {
        if !verify {
            let identity = match (certfile, keyfile) {
                (Some(cert), Some(key)) => Some(crate::tls::ClientIdentity::read(cert, key)?),
                (None, None) => None,
                _ => {
                    return Err(invalid(
                        "ssl: a client certificate needs both certfile and keyfile",
                    ))
                }
            };
            return Ok(TlsSetup::Unverified(Arc::new(
                crate::tls::unverified_client(identity)?,
            )));
        }
        if !check_hostname {
            return Err(Error::unsupported(
                "ssl: the AMQP transport checks the hostname of a server it verifies \
                 (rustls); ssl_check_hostname=false is not supported (ssl_cert_reqs=CERT_NONE \
                 turns off every check)",
            ));
        }
        if let Some(ca) = ca_certs {
            let pem = read(ca, "ca_certs")?;
            config.cert_chain = Some(String::from_utf8(pem).map_err(|_| {
                invalid(format!("ssl ca_certs: {} is not a PEM file", ca.display()))
            })?);
        }
        match (certfile, keyfile) {
            (Some(cert), Some(key)) => {
                config.identity = Some(OwnedIdentity::PKCS8 {
                    pem: read(cert, "certfile")?,
                    key: read(key, "keyfile")?,
                });
            }
            (None, None) => {}
            _ => {
                return Err(invalid(
                    "ssl: a client certificate needs both certfile and keyfile",
                ))
            }
        }
    }
    Ok(TlsSetup::Verified(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kombu_core::TransportOptions;

    fn config(url: &str, options: ConnectionOptions) -> Result<ConnectConfig> {
        let url = BrokerUrl::parse(url)?;
        let mut options = options;
        options.apply_query(&url)?;
        ConnectConfig::new(&url, &options, url.scheme() == "amqps")
    }

    #[test]
    fn vhost_forms() {
        for (url, vhost) in [
            ("amqp://localhost//foo", "/foo"),
            ("amqp://localhost/foo", "foo"),
            ("amqp://localhost//", "/"),
            ("amqp://localhost", "/"),
            ("amqp://localhost/%2F", "/"),
        ] {
            assert_eq!(
                config(url, ConnectionOptions::new()).unwrap().uri.vhost,
                vhost,
                "{url}"
            );
        }
    }

    #[test]
    fn url_parts_and_options() {
        let c = config(
            "amqp://u:p@h:1234/v?heartbeat=2.5&frame_max=131072&confirm_publish=1",
            ConnectionOptions::new(),
        )
        .unwrap();
        assert_eq!(c.uri.authority.userinfo.username, "u");
        assert_eq!(c.uri.authority.host, "h");
        assert_eq!(c.uri.authority.port, 1234);
        assert_eq!(c.uri.query.heartbeat, Some(3));
        assert_eq!(c.uri.query.frame_max, Some(131072));
        let default_timeout = ConnectionOptions::new().connect_timeout.unwrap();
        assert_eq!(
            c.uri.query.connection_timeout,
            Some(default_timeout.as_millis() as u64)
        );
        assert!(c.settings.confirm_publish);
        assert!(c.settings.ack_coalescing);
        assert_eq!(c.uri.scheme, AMQPScheme::AMQP);
        assert_eq!(c.endpoint, "h:1234");
        let c = config("amqp://h/?ack_coalescing=0", ConnectionOptions::new()).unwrap();
        assert!(!c.settings.ack_coalescing);
        assert_eq!(c.settings.delay_queue_type, DelayQueueType::Quorum);
        let c = config(
            "amqp://h/?delayed_delivery_queue_type=classic",
            ConnectionOptions::new(),
        )
        .unwrap();
        assert_eq!(c.settings.delay_queue_type, DelayQueueType::Classic);
        assert!(config(
            "amqp://h/?delayed_delivery_queue_type=stream",
            ConnectionOptions::new()
        )
        .is_err());
    }

    #[test]
    fn ssl_switches_scheme_and_port() {
        let c = config("amqps://h/", ConnectionOptions::new()).unwrap();
        assert_eq!(c.uri.scheme, AMQPScheme::AMQPS);
        assert_eq!(c.uri.authority.port, 5671);
        let c = config("amqp://h:5671/?ssl=1", ConnectionOptions::new()).unwrap();
        assert_eq!(c.uri.scheme, AMQPScheme::AMQPS);
    }

    #[test]
    fn unknown_options_are_named() {
        let options = ConnectionOptions::new()
            .transport_options(TransportOptions::new().set("visibility_timeout", 1));
        let err = config("amqp://h/", options).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidOption);
        assert!(err.to_string().contains("\"visibility_timeout\""), "{err}");
    }

    #[test]
    fn ssl_files_are_checked() {
        let err = config(
            "amqp://h/?ssl=1&ssl_ca_certs=/nonexistent/ca.pem",
            ConnectionOptions::new(),
        )
        .err()
        .unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidOption);
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let c = config(
            "amqp://h/?ssl=1&ssl_cert_reqs=CERT_NONE",
            ConnectionOptions::new(),
        )
        .unwrap();
        assert!(matches!(c.tls, TlsSetup::Unverified(_)));
        let err = config(
            "amqp://h/?ssl=1&ssl_check_hostname=false",
            ConnectionOptions::new(),
        )
        .err()
        .unwrap();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
    }

    #[test]
    fn login_methods() {
        let c = config("amqp://h/?login_method=AMQPLAIN", ConnectionOptions::new()).unwrap();
        assert_eq!(c.uri.query.auth_mechanism, Some(SASLMechanism::AMQPlain));
        assert!(config("amqp://h/?login_method=GSSAPI", ConnectionOptions::new()).is_err());
    }
}
