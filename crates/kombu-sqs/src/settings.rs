//! The transport options of `sqs://` (kombu's names) and what the URL says.

use std::collections::BTreeMap;
use std::time::Duration;

use kombu_core::spi::VIRTUAL_OPTIONS;
use kombu_core::{BrokerUrl, Error, Result, TransportOptions};
use serde_json::Value;

/// Transport options `sqs://` understands (kombu 5.7's names, plus
/// `binding_cache_seconds`, `max_message_size`, `socket_timeout` and
/// `max_delay_seconds`); the
/// core's `unroutable_queue` and `operation_timeout` are accepted too.
pub const KNOWN_OPTIONS: &[&str] = &[
    "region",
    "endpoint_url",
    "is_secure",
    "visibility_timeout",
    "wait_time_seconds",
    "polling_interval",
    "queue_name_prefix",
    "predefined_queues",
    "message_attributes",
    "queue_tags",
    "supports_fanout",
    "sqs_base64_encoding",
    "sqs-creation-attributes",
    "binding_cache_seconds",
    "max_message_size",
    "socket_timeout",
    "max_delay_seconds",
];

/// How long one attempt at a request waits for its answer by default.
pub const DEFAULT_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// SQS's limit on a message (body and attributes): 256 KiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 262_144;

/// Static credentials.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct StaticKeys {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
    pub(crate) session_token: Option<String>,
}

impl std::fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeys")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"**")
            .finish()
    }
}

/// A queue given by URL in `predefined_queues`.
#[derive(Debug, Clone)]
pub(crate) struct PredefinedQueue {
    pub(crate) url: String,
    pub(crate) keys: Option<StaticKeys>,
    pub(crate) region: Option<String>,
}

/// Everything the backend needs from the URL and the options.
#[derive(Debug, Clone)]
pub(crate) struct SqsSettings {
    pub(crate) keys: Option<StaticKeys>,
    pub(crate) endpoint_url: Option<String>,
    pub(crate) region: Option<String>,
    pub(crate) visibility_timeout: i32,
    pub(crate) wait_time_seconds: i32,
    pub(crate) polling_interval: Duration,
    pub(crate) queue_name_prefix: String,
    pub(crate) predefined_queues: BTreeMap<String, PredefinedQueue>,
    pub(crate) message_attributes: BTreeMap<String, String>,
    pub(crate) queue_tags: BTreeMap<String, String>,
    pub(crate) creation_attributes: BTreeMap<String, String>,
    pub(crate) supports_fanout: bool,
    pub(crate) base64_encoding: bool,
    pub(crate) binding_cache: Duration,
    pub(crate) max_message_size: usize,
    /// The longest `DelaySeconds` sent for a delayed message (1-900): a
    /// longer delay is re-delayed in steps of this.
    pub(crate) max_delay_seconds: i32,
    /// Bound of one attempt at a request (a long poll: plus its wait).
    pub(crate) socket_timeout: Duration,
    /// Bound on opening a connection (kombu's `connect_timeout`).
    pub(crate) connect_timeout: Option<Duration>,
}

fn string_map(options: &TransportOptions, key: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    match options.get(key) {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => {
                        return Err(Error::invalid_option(format!(
                            "transport option {key}.{k} must be a string or a number, not {other}"
                        )))
                    }
                };
                out.insert(k.clone(), text);
            }
        }
        Some(other) => {
            return Err(Error::invalid_option(format!(
                "transport option {key} must be an object of names to values, not {other}"
            )))
        }
    }
    Ok(out)
}

fn seconds_i32(options: &TransportOptions, key: &str, default: i32, max: i32) -> Result<i32> {
    let Some(value) = options.get_f64(key)? else {
        return Ok(default);
    };
    if !(0.0..=f64::from(max)).contains(&value) {
        return Err(Error::invalid_option(format!(
            "transport option {key} must be between 0 and {max} seconds, not {value}"
        )));
    }
    // SQS takes whole seconds (kombu: int(float(value))).
    Ok(value as i32)
}

fn predefined(options: &TransportOptions) -> Result<BTreeMap<String, PredefinedQueue>> {
    let mut out = BTreeMap::new();
    let map = match options.get("predefined_queues") {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(Error::invalid_option(format!(
                "transport option predefined_queues must be an object, not {other}"
            )))
        }
    };
    for (name, entry) in map {
        let text = |key: &str| entry.get(key).and_then(Value::as_str).map(str::to_owned);
        let url = text("url").ok_or_else(|| {
            Error::invalid_option(format!("predefined_queues.{name} needs a \"url\""))
        })?;
        if url.ends_with(".fifo") != name.ends_with(".fifo") {
            return Err(Error::invalid_option(format!(
                "predefined_queues.{name}: a FIFO queue's name and URL must both end with .fifo"
            )));
        }
        let keys = match (text("access_key_id"), text("secret_access_key")) {
            (Some(access_key_id), Some(secret_access_key)) => Some(StaticKeys {
                access_key_id,
                secret_access_key,
                session_token: text("session_token"),
            }),
            (None, None) => None,
            _ => {
                return Err(Error::invalid_option(format!(
                    "predefined_queues.{name}: give both access_key_id and secret_access_key"
                )))
            }
        };
        out.insert(
            name.clone(),
            PredefinedQueue {
                url,
                keys,
                region: text("region"),
            },
        );
    }
    Ok(out)
}

impl SqsSettings {
    /// Read the URL (completed by the core: a URL without a host names
    /// `localhost`, nothing else is filled in) and the transport options.
    pub(crate) fn new(url: &BrokerUrl, options: &TransportOptions) -> Result<Self> {
        options.check_known(&[KNOWN_OPTIONS, VIRTUAL_OPTIONS].concat(), "sqs")?;
        let is_secure = options.get_bool("is_secure")?.unwrap_or(false);
        // The URL's keys are used as written; without any, the AWS default
        // credential chain (as `sqs://` does in kombu).
        let given = |part: Option<&str>| part.filter(|p| !p.is_empty()).map(str::to_owned);
        let keys = match (given(url.userid()), given(url.password())) {
            (Some(access_key_id), Some(secret_access_key)) => Some(StaticKeys {
                access_key_id,
                secret_access_key,
                session_token: None,
            }),
            (None, None) => None,
            _ => {
                return Err(Error::invalid_option(
                    "sqs: give both the access key id and the secret key in the URL \
                     (sqs://KEY:SECRET@...), or neither for the AWS default credential chain",
                ))
            }
        };
        let url_endpoint = match (url.hostname(), url.port()) {
            (None, _) | (Some("localhost"), None) => None,
            (Some(host), port) => {
                let scheme = if is_secure { "https" } else { "http" };
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.to_owned()
                };
                Some(match port {
                    Some(port) => format!("{scheme}://{host}:{port}"),
                    None => format!("{scheme}://{host}"),
                })
            }
        };
        let endpoint_url = options
            .get_str("endpoint_url")?
            .map(str::to_owned)
            .or(url_endpoint);
        // The core bounds a fetch by `operation_timeout` (plus the polling
        // interval): a long poll must end within it.
        let mut wait_time_seconds = seconds_i32(options, "wait_time_seconds", 10, 20)?;
        if let Some(bound) = options.get_duration_secs("operation_timeout")? {
            let fits = (bound.as_secs_f64() - 1.0).floor().max(0.0) as i32;
            if wait_time_seconds > fits {
                tracing::warn!(
                    wait_time_seconds,
                    operation_timeout = bound.as_secs_f64(),
                    "sqs: the long poll is shortened to {fits} s to end within operation_timeout"
                );
                wait_time_seconds = fits;
            }
        }
        let max_message_size = options
            .get_u64("max_message_size")?
            .map_or(DEFAULT_MAX_MESSAGE_SIZE, |n| n as usize);
        let max_delay_seconds = seconds_i32(
            options,
            "max_delay_seconds",
            crate::codec::MAX_DELAY_SECONDS,
            crate::codec::MAX_DELAY_SECONDS,
        )?;
        if max_delay_seconds < 1 {
            return Err(Error::invalid_option(
                "transport option max_delay_seconds must be at least 1 second",
            ));
        }
        Ok(SqsSettings {
            keys,
            endpoint_url,
            region: options.get_str("region")?.map(str::to_owned),
            visibility_timeout: seconds_i32(options, "visibility_timeout", 1800, 43_200)?,
            wait_time_seconds,
            polling_interval: options
                .get_duration_secs("polling_interval")?
                .unwrap_or(Duration::ZERO),
            queue_name_prefix: options
                .get_str("queue_name_prefix")?
                .unwrap_or_default()
                .to_owned(),
            predefined_queues: predefined(options)?,
            message_attributes: string_map(options, "message_attributes")?,
            queue_tags: string_map(options, "queue_tags")?,
            creation_attributes: string_map(options, "sqs-creation-attributes")?,
            supports_fanout: options.get_bool("supports_fanout")?.unwrap_or(true),
            base64_encoding: options.get_bool("sqs_base64_encoding")?.unwrap_or(true),
            binding_cache: options
                .get_duration_secs("binding_cache_seconds")?
                .unwrap_or(Duration::from_secs(1)),
            max_message_size,
            max_delay_seconds,
            socket_timeout: match options.get_duration_secs("socket_timeout")? {
                None => DEFAULT_SOCKET_TIMEOUT,
                Some(d) if d.is_zero() => {
                    return Err(kombu_core::Error::invalid_option(
                        "socket_timeout: must be more than 0 seconds",
                    ))
                }
                Some(d) => d,
            },
            connect_timeout: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kombu_core::url::UrlDefaults;

    /// The URL as the core completes it for `sqs://` (no port, no login).
    fn settings(url: &str, options: TransportOptions) -> Result<SqsSettings> {
        let defaults = UrlDefaults {
            hostname: Some("localhost"),
            ..UrlDefaults::default()
        };
        let url = BrokerUrl::parse(url)?.completed(&defaults);
        SqsSettings::new(&url, &options)
    }

    #[test]
    fn credentials_are_used_as_written() {
        // guest:guest is a pair of keys like any other.
        let s = settings("sqs://guest:guest@", TransportOptions::new()).unwrap();
        let keys = s.keys.unwrap();
        assert_eq!(
            (keys.access_key_id.as_str(), keys.secret_access_key.as_str()),
            ("guest", "guest")
        );
        assert!(s.endpoint_url.is_none());
        // Half a pair is a mistake, not the default chain.
        assert!(settings("sqs://AKID@", TransportOptions::new()).is_err());
        assert!(settings("sqs://:secret@", TransportOptions::new()).is_err());
    }

    #[test]
    fn the_long_poll_ends_within_operation_timeout() {
        let s = settings(
            "sqs://",
            TransportOptions::new().set("operation_timeout", 2),
        )
        .unwrap();
        assert_eq!(s.wait_time_seconds, 1);
        let s = settings(
            "sqs://",
            TransportOptions::new()
                .set("operation_timeout", 60)
                .set("wait_time_seconds", 20)
                .set("unroutable_queue", "lost"),
        )
        .unwrap();
        assert_eq!(s.wait_time_seconds, 20);
    }

    #[test]
    fn bare_url_uses_aws_and_the_default_chain() {
        let s = settings("sqs://", TransportOptions::new()).unwrap();
        assert!(s.keys.is_none());
        assert!(s.endpoint_url.is_none());
        assert_eq!(s.visibility_timeout, 1800);
        assert_eq!(s.wait_time_seconds, 10);
        assert!(s.supports_fanout && s.base64_encoding);
    }

    #[test]
    fn keys_in_the_url_are_percent_decoded() {
        let s = settings("sqs://AKID:se%2Fcr%2Bet@", TransportOptions::new()).unwrap();
        let keys = s.keys.unwrap();
        assert_eq!(keys.access_key_id, "AKID");
        assert_eq!(keys.secret_access_key, "se/cr+et");
        assert!(!format!("{keys:?}").contains("se/cr+et"));
        assert!(s.endpoint_url.is_none());
    }

    #[test]
    fn host_and_port_make_the_endpoint() {
        let s = settings("sqs://k:s@127.0.0.1:4566", TransportOptions::new()).unwrap();
        assert_eq!(s.endpoint_url.as_deref(), Some("http://127.0.0.1:4566"));
        let s = settings(
            "sqs://k:s@sqs.example:443",
            TransportOptions::new().set("is_secure", true),
        )
        .unwrap();
        assert_eq!(s.endpoint_url.as_deref(), Some("https://sqs.example:443"));
        let s = settings(
            "sqs://k:s@h:1",
            TransportOptions::new().set("endpoint_url", "https://other"),
        )
        .unwrap();
        assert_eq!(s.endpoint_url.as_deref(), Some("https://other"));
    }

    #[test]
    fn max_delay_seconds_is_one_to_900() {
        let s = settings("sqs://", TransportOptions::new()).unwrap();
        assert_eq!(s.max_delay_seconds, 900);
        let s = settings(
            "sqs://",
            TransportOptions::new().set("max_delay_seconds", "2"),
        )
        .unwrap();
        assert_eq!(s.max_delay_seconds, 2);
        for bad in [0, 901] {
            let options = TransportOptions::new().set("max_delay_seconds", bad);
            assert!(settings("sqs://", options).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_are_checked() {
        let bad = TransportOptions::new().set("wait_time_seconds", 21);
        assert!(settings("sqs://", bad).is_err());
        let unknown = TransportOptions::new().set("visibilty_timeout", 5);
        assert!(settings("sqs://", unknown).is_err());
        let fifo = TransportOptions::new().set(
            "predefined_queues",
            serde_json::json!({"q.fifo": {"url": "https://sqs/1/q"}}),
        );
        assert!(settings("sqs://", fifo).is_err());
        let ok = TransportOptions::new()
            .set("visibility_timeout", 30.7)
            .set("queue_tags", serde_json::json!({"team": "a", "n": 1}))
            .set(
                "predefined_queues",
                serde_json::json!({"q": {"url": "https://sqs/1/q", "access_key_id": "a", "secret_access_key": "b"}}),
            );
        let s = settings("sqs://", ok).unwrap();
        assert_eq!(s.visibility_timeout, 30);
        assert_eq!(s.queue_tags["n"], "1");
        assert!(s.predefined_queues["q"].keys.is_some());
    }
}
