//! A JetStream key-value bucket through the plain JetStream API, laid out
//! as every NATS client lays one out (stream `KV_<bucket>`, subjects
//! `$KV.<bucket>.<key>`, one message per key), so the `nats kv` tools read
//! it. async-nats's own key-value client expects answers of newer servers
//! than 2.9; these few calls work on 2.9 and later.

use async_nats::{HeaderMap, StatusCode};
use bytes::Bytes;
use kombu_core::{Error, ErrorKind, Result};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::Api;
use crate::settings::Settings;

/// JetStream's error for a failed `Nats-Expected-Last-Subject-Sequence`.
const WRONG_LAST_SEQUENCE: u64 = 10071;

/// One key's latest entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) value: Bytes,
    /// Its stream sequence: what a compare-and-set expects.
    pub(crate) revision: u64,
    /// A delete or purge marker.
    pub(crate) deleted: bool,
}

/// A write refused because the key changed since `expected`.
#[derive(Debug)]
pub(crate) enum Written {
    Done,
    Conflict,
}

#[derive(Debug, Deserialize)]
struct StreamInfo {
    state: StreamState,
}

#[derive(Debug, Deserialize)]
struct StreamState {
    #[serde(default)]
    subjects: Option<std::collections::HashMap<String, u64>>,
}

/// A key-value bucket.
pub(crate) struct Bucket {
    api: Api,
    stream: String,
    /// `$KV.<bucket>.`
    prefix: String,
}

impl Bucket {
    /// Open `settings.topology_bucket`, creating it if missing.
    pub(crate) async fn open(api: Api, settings: &Settings) -> Result<Bucket> {
        let bucket = &settings.topology_bucket;
        let stream = format!("KV_{bucket}");
        let prefix = format!("$KV.{bucket}.");
        let config = json!({
            "name": stream,
            "description": "kombu-rs declarations: queues, exchanges, bindings",
            "subjects": [format!("{prefix}>")],
            "retention": "limits",
            "max_msgs_per_subject": 1,
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": 0,
            "max_msg_size": -1,
            "storage": settings.storage.as_str(),
            "num_replicas": settings.replicas,
            "discard": "new",
            "duplicate_window": 120_000_000_000u64,
            "allow_rollup_hdrs": true,
            "deny_delete": true,
            "allow_direct": true,
        });
        let created: Result<Value> = api
            .call(
                "creating the topology bucket",
                &format!("STREAM.CREATE.{stream}"),
                &config,
            )
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::PreconditionFailed => {}
            Err(e) => return Err(e),
        }
        Ok(Bucket {
            api,
            stream,
            prefix,
        })
    }

    /// The latest entry of `key`, a delete marker included.
    pub(crate) async fn entry(&self, key: &str) -> Result<Option<Entry>> {
        let answer = self
            .api
            .request_raw(
                "reading the topology",
                format!("$JS.API.DIRECT.GET.{}.{}{key}", self.stream, self.prefix),
                Bytes::new(),
            )
            .await?;
        match answer.status {
            None | Some(StatusCode::OK) => {}
            Some(StatusCode::NOT_FOUND) => return Ok(None),
            Some(status) => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!(
                        "nats: reading the topology: status {status} {}",
                        answer.description.as_deref().unwrap_or("")
                    ),
                ))
            }
        }
        let header = |name: &str| {
            answer
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let revision = header("Nats-Sequence")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Protocol,
                    "nats: reading the topology: the answer has no Nats-Sequence",
                )
            })?;
        let deleted = matches!(header("KV-Operation").as_deref(), Some("DEL" | "PURGE"));
        Ok(Some(Entry {
            value: answer.payload,
            revision,
            deleted,
        }))
    }

    /// The value of `key` (none when deleted).
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self
            .entry(key)
            .await?
            .filter(|e| !e.deleted)
            .map(|e| e.value))
    }

    /// Write `value` whatever was there.
    pub(crate) async fn put(&self, key: &str, value: Bytes) -> Result<()> {
        self.api
            .publish(format!("{}{key}", self.prefix), value)
            .await?;
        Ok(())
    }

    /// Write `value` if the key's latest revision is still `expected` (0:
    /// the key has never been written).
    pub(crate) async fn update(&self, key: &str, value: Bytes, expected: u64) -> Result<Written> {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected.to_string().as_str(),
        );
        match self
            .api
            .publish_with_headers(format!("{}{key}", self.prefix), Some(headers), value)
            .await
        {
            Ok(_) => Ok(Written::Done),
            Err(e) if is_wrong_last_sequence(&e) => Ok(Written::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Remove `key` and its history (a purge marker stays).
    pub(crate) async fn purge(&self, key: &str) -> Result<()> {
        let mut headers = HeaderMap::new();
        headers.insert("KV-Operation", "PURGE");
        headers.insert("Nats-Rollup", "sub");
        self.api
            .publish_with_headers(format!("{}{key}", self.prefix), Some(headers), Bytes::new())
            .await?;
        Ok(())
    }

    /// Keys starting with `prefix` (delete markers included).
    pub(crate) async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let info: StreamInfo = self
            .api
            .call(
                "listing the topology",
                &format!("STREAM.INFO.{}", self.stream),
                &json!({"subjects_filter": format!("{}{prefix}>", self.prefix)}),
            )
            .await?;
        Ok(info
            .state
            .subjects
            .unwrap_or_default()
            .into_keys()
            .filter_map(|s| s.strip_prefix(&self.prefix).map(str::to_owned))
            .collect())
    }
}

fn is_wrong_last_sequence(e: &Error) -> bool {
    e.source_as::<crate::error::ApiError>()
        .is_some_and(|api| api.err_code == WRONG_LAST_SEQUENCE)
}
