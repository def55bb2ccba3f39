//! Options from a URL's query: [`ConnectionOptions::apply_query`].

use std::path::PathBuf;

use serde_json::Value;

use super::value::{as_bool, as_duration, invalid_value, BOOL, SECONDS};
use super::{ConnectionOptions, SslOptions};
use crate::error::{Error, Result};
use crate::url::BrokerUrl;

/// The query keys [`ConnectionOptions::apply_query`] turns into SSL settings.
const SSL_FILE_KEYS: [&str; 5] = [
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
];

impl ConnectionOptions {
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
    use crate::options::FailoverStrategy;
    use serde_json::json;
    use std::fmt;
    use std::time::Duration;

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
