//! The few JetStream API calls the transport makes, as plain requests
//! (`$JS.API.*`): one way to send them and one way to read errors.

use std::time::Duration;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use kombu_core::{Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error;
use crate::settings::Settings;

/// The answer to a publish to a stream.
#[derive(Debug, Deserialize)]
pub(crate) struct PubAck {
    pub(crate) seq: u64,
}

/// What the transport reads of a consumer.
#[derive(Debug, Deserialize)]
pub(crate) struct ConsumerInfo {
    /// Messages not delivered yet.
    pub(crate) num_pending: u64,
    /// Delivered and not acked (requeued ones waiting included).
    pub(crate) num_ack_pending: u64,
}

#[derive(Debug, Deserialize)]
struct Purged {
    purged: u64,
}

/// The JetStream API over one client.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) client: Client,
    timeout: Duration,
}

impl Api {
    pub(crate) fn new(client: Client, timeout: Duration) -> Self {
        Api { client, timeout }
    }

    /// Send `payload` to `subject` and wait for one answer.
    pub(crate) async fn request_raw(
        &self,
        doing: &str,
        subject: String,
        payload: Bytes,
    ) -> Result<async_nats::Message> {
        self.request_with_headers(doing, subject, None, payload)
            .await
    }

    /// Send `payload` with `headers` to `subject` and wait for one answer.
    pub(crate) async fn request_with_headers(
        &self,
        doing: &str,
        subject: String,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<async_nats::Message> {
        let mut request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(self.timeout));
        if let Some(headers) = headers {
            request = request.headers(headers);
        }
        self.client
            .send_request(subject, request)
            .await
            .map_err(|e| error::request(doing, e))
    }

    /// A `$JS.API.<api>` call.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        doing: &str,
        api: &str,
        body: &Value,
    ) -> Result<T> {
        let payload = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(serde_json::to_vec(body).expect("JSON values serialize"))
        };
        let answer = self
            .request_raw(doing, format!("$JS.API.{api}"), payload)
            .await
            .map_err(|e| {
                if e.kind() == ErrorKind::NotFound {
                    // No responders on the API: JetStream is off.
                    Error::new(
                        ErrorKind::ConnectionRefused,
                        format!("nats: {doing}: JetStream is not enabled on the server (start nats-server with -js)"),
                    )
                } else {
                    e
                }
            })?;
        parse(doing, &answer.payload)
    }

    /// JetStream's account info: the heartbeat.
    pub(crate) async fn ping(&self) -> Result<()> {
        let _: Value = self.call("heartbeat", "INFO", &Value::Null).await?;
        Ok(())
    }

    /// Create the stream of a queue (nothing when it exists).
    pub(crate) async fn create_stream(
        &self,
        settings: &Settings,
        stream: &str,
        subject: &str,
    ) -> Result<()> {
        let config = json!({
            "name": stream,
            "subjects": [subject],
            "retention": "workqueue",
            "storage": settings.storage.as_str(),
            "num_replicas": settings.replicas,
            "discard": "old",
            "max_consumers": -1,
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": 0,
            "max_msg_size": -1,
            "duplicate_window": 120_000_000_000u64,
        });
        let created: Result<Value> = self
            .call(
                "creating a queue's stream",
                &format!("STREAM.CREATE.{stream}"),
                &config,
            )
            .await;
        match created {
            Ok(_) => Ok(()),
            // Created by another client with other settings: keep it.
            Err(e) if e.kind() == ErrorKind::PreconditionFailed => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Create (or update, with `update`) the durable pull consumer of a stream.
    pub(crate) async fn create_consumer(&self, settings: &Settings, stream: &str) -> Result<()> {
        self.create_consumer_with(settings, stream, settings.max_ack_pending)
            .await
    }

    /// [`create_consumer`](Self::create_consumer) with its own
    /// `max_ack_pending` (-1: no limit, for a delay stream, whose waiting
    /// messages are all NAKed with a delay, so pending).
    pub(crate) async fn create_consumer_with(
        &self,
        settings: &Settings,
        stream: &str,
        max_ack_pending: i64,
    ) -> Result<()> {
        let name = &settings.names.consumer;
        let body = json!({
            "stream_name": stream,
            "config": {
                "durable_name": name,
                "deliver_policy": "all",
                "ack_policy": "explicit",
                "ack_wait": settings.visibility_timeout.as_nanos() as u64,
                "max_deliver": -1,
                "replay_policy": "instant",
                "max_ack_pending": max_ack_pending,
                "max_waiting": 512,
            }
        });
        let created: Result<Value> = self
            .call(
                "creating a queue's consumer",
                &format!("CONSUMER.DURABLE.CREATE.{stream}.{name}"),
                &body,
            )
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::PreconditionFailed => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// [`call`](Self::call), with JetStream's "not found" (a stream or
    /// consumer that is not there) as `None`.
    async fn call_if_found<T: DeserializeOwned>(
        &self,
        doing: &str,
        api: &str,
    ) -> Result<Option<T>> {
        match self.call(doing, api, &Value::Null).await {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Delete the durable consumer of a stream; false when there was none.
    pub(crate) async fn delete_consumer(&self, stream: &str, consumer: &str) -> Result<bool> {
        Ok(self
            .call_if_found::<Value>(
                "deleting a queue's consumer",
                &format!("CONSUMER.DELETE.{stream}.{consumer}"),
            )
            .await?
            .is_some())
    }

    /// The consumer of a stream; `None` when the stream or consumer is gone.
    pub(crate) async fn consumer_info(
        &self,
        stream: &str,
        consumer: &str,
    ) -> Result<Option<ConsumerInfo>> {
        self.call_if_found(
            "reading a queue's consumer",
            &format!("CONSUMER.INFO.{stream}.{consumer}"),
        )
        .await
    }

    /// True when the stream exists.
    pub(crate) async fn stream_exists(&self, stream: &str) -> Result<bool> {
        Ok(self
            .call_if_found::<Value>("reading a queue's stream", &format!("STREAM.INFO.{stream}"))
            .await?
            .is_some())
    }

    /// Delete a stream; false when there was none.
    pub(crate) async fn delete_stream(&self, stream: &str) -> Result<bool> {
        Ok(self
            .call_if_found::<Value>(
                "deleting a queue's stream",
                &format!("STREAM.DELETE.{stream}"),
            )
            .await?
            .is_some())
    }

    /// Remove every message of a stream; returns how many.
    pub(crate) async fn purge_stream(&self, stream: &str) -> Result<u64> {
        Ok(self
            .call_if_found::<Purged>(
                "purging a queue's stream",
                &format!("STREAM.PURGE.{stream}"),
            )
            .await?
            .map_or(0, |p| p.purged))
    }

    /// Publish to a stream's subject and wait for JetStream's answer.
    /// `NotFound` when no stream takes the subject.
    pub(crate) async fn publish(&self, subject: String, payload: Bytes) -> Result<u64> {
        self.publish_with_headers(subject, None, payload).await
    }

    /// Publish with headers (`Nats-Expected-Last-Subject-Sequence`,
    /// `Nats-Rollup`...); returns the message's stream sequence.
    pub(crate) async fn publish_with_headers(
        &self,
        subject: String,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<u64> {
        let answer = self
            .request_with_headers("publishing", subject, headers, payload)
            .await?;
        let ack: PubAck = parse("publishing", &answer.payload)?;
        Ok(ack.seq)
    }
}

/// A JetStream API answer: an error or the value.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Response<T> {
    Err { error: error::ApiError },
    Ok(T),
}

/// Read a JetStream answer.
pub(crate) fn parse<T: DeserializeOwned>(doing: &str, payload: &[u8]) -> Result<T> {
    match serde_json::from_slice::<Response<T>>(payload) {
        Ok(Response::Ok(value)) => Ok(value),
        Ok(Response::Err { error }) => Err(error::jetstream(doing, error)),
        Err(e) => Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "nats: {doing}: unexpected answer {:?}",
                String::from_utf8_lossy(&payload[..payload.len().min(200)])
            ),
        )
        .with_source(e)),
    }
}
