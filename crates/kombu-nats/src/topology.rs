//! Declarations every client of the server shares: queue arguments,
//! exchanges and bindings, in a JetStream key-value bucket.
//!
//! Keys are `queue.<name>`, `exchange.<name>` and `bindings.<exchange>`
//! (names escaped, see `names`). A queue's value is its declare arguments
//! (`x-message-ttl`, `x-max-length`, `x-dead-letter-exchange`...), an
//! exchange's its type and flags, a binding list the JSON list of
//! `{queue, routing_key, arguments}`. A binding list changes by
//! compare-and-set on its revision, so two clients binding at once both
//! land.

use bytes::Bytes;
use kombu_core::routing::QueueBinding;
use kombu_core::{Arguments, Error, ErrorKind, Exchange, ExchangeType, Queue, Result};
use serde::{Deserialize, Serialize};

use crate::api::Api;
use crate::bucket::{Bucket, Written};
use crate::names::{key, unescape};
use crate::settings::Settings;

/// Compare-and-set attempts before a binding change gives up.
const CAS_TRIES: usize = 50;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct ExchangeEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    arguments: Arguments,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct BindingEntry {
    queue: String,
    routing_key: String,
    #[serde(default)]
    arguments: Arguments,
}

impl From<&QueueBinding> for BindingEntry {
    fn from(b: &QueueBinding) -> Self {
        BindingEntry {
            queue: b.queue.clone(),
            routing_key: b.routing_key.clone(),
            arguments: b.arguments.clone(),
        }
    }
}

/// The topology bucket.
pub(crate) struct Topology {
    bucket: Bucket,
}

fn corrupt(key: &str, err: serde_json::Error) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!("nats: topology key {key:?} does not hold kombu JSON: {err}"),
    )
}

impl Topology {
    /// Open the bucket, creating it if missing.
    pub(crate) async fn open(api: Api, settings: &Settings) -> Result<Topology> {
        Ok(Topology {
            bucket: Bucket::open(api, settings).await?,
        })
    }

    async fn get<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>> {
        self.bucket
            .get(key)
            .await?
            .map(|v| serde_json::from_slice(&v).map_err(|e| corrupt(key, e)))
            .transpose()
    }

    async fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let bytes = Bytes::from(serde_json::to_vec(value).expect("declarations serialize"));
        self.bucket.put(key, bytes).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        if self.bucket.get(key).await?.is_some() {
            self.bucket.purge(key).await?;
        }
        Ok(())
    }

    /// Remember a queue's declaration.
    pub(crate) async fn put_queue(&self, queue: &Queue) -> Result<()> {
        let key = key("queue", &queue.name)?;
        let args = queue.declare_arguments();
        if self.get::<Arguments>(&key).await?.as_ref() == Some(&args) {
            return Ok(());
        }
        self.put(&key, &args).await
    }

    /// A queue's declaration.
    pub(crate) async fn queue(&self, name: &str) -> Result<Option<Queue>> {
        let args: Option<Arguments> = self.get(&key("queue", name)?).await?;
        Ok(args.map(|args| Queue::from_arguments(name, &args)))
    }

    /// Forget a queue and every binding to it.
    pub(crate) async fn delete_queue(&self, name: &str) -> Result<()> {
        self.delete(&key("queue", name)?).await?;
        for exchange in self.bound_exchanges().await? {
            self.change_bindings(&exchange, |list| {
                let before = list.len();
                list.retain(|b| b.queue != name);
                list.len() != before
            })
            .await?;
        }
        Ok(())
    }

    /// The exchanges that have a binding list.
    async fn bound_exchanges(&self) -> Result<Vec<String>> {
        Ok(self
            .bucket
            .keys("bindings.")
            .await?
            .iter()
            .filter_map(|k| k.strip_prefix("bindings."))
            .filter_map(unescape)
            .collect())
    }

    /// Remember an exchange.
    pub(crate) async fn put_exchange(&self, exchange: &Exchange) -> Result<()> {
        let key = key("exchange", &exchange.name)?;
        let entry = ExchangeEntry {
            kind: exchange.kind.as_str().to_owned(),
            durable: exchange.durable,
            auto_delete: exchange.auto_delete,
            arguments: exchange.arguments.clone(),
        };
        if self.get::<ExchangeEntry>(&key).await?.as_ref() == Some(&entry) {
            return Ok(());
        }
        self.put(&key, &entry).await
    }

    /// An exchange.
    pub(crate) async fn exchange(&self, name: &str) -> Result<Option<Exchange>> {
        let entry: Option<ExchangeEntry> = self.get(&key("exchange", name)?).await?;
        Ok(entry.map(|entry| {
            let kind: ExchangeType = entry.kind.parse().unwrap_or(ExchangeType::Direct);
            let mut exchange = Exchange::new(name, kind)
                .durable(entry.durable)
                .auto_delete(entry.auto_delete);
            exchange.arguments = entry.arguments;
            exchange
        }))
    }

    /// Forget an exchange and its bindings.
    pub(crate) async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.delete(&key("exchange", name)?).await?;
        self.delete(&key("bindings", name)?).await
    }

    /// The bindings of an exchange.
    pub(crate) async fn bindings(&self, exchange: &str) -> Result<Vec<QueueBinding>> {
        let list: Option<Vec<BindingEntry>> = self.get(&key("bindings", exchange)?).await?;
        Ok(list
            .unwrap_or_default()
            .into_iter()
            .map(|b| QueueBinding::new(&b.queue, &b.routing_key).with_arguments(b.arguments))
            .collect())
    }

    /// Add a binding (no duplicates).
    pub(crate) async fn bind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        let entry = BindingEntry::from(binding);
        self.change_bindings(exchange, |list| {
            if list.contains(&entry) {
                false
            } else {
                list.push(entry.clone());
                true
            }
        })
        .await
    }

    /// Remove a binding.
    pub(crate) async fn unbind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        let entry = BindingEntry::from(binding);
        self.change_bindings(exchange, |list| {
            let before = list.len();
            list.retain(|b| *b != entry);
            list.len() != before
        })
        .await
    }

    /// Change an exchange's binding list by compare-and-set; `change`
    /// returns false when it changed nothing.
    async fn change_bindings(
        &self,
        exchange: &str,
        mut change: impl FnMut(&mut Vec<BindingEntry>) -> bool,
    ) -> Result<()> {
        let key = key("bindings", exchange)?;
        for _ in 0..CAS_TRIES {
            let entry = self.bucket.entry(&key).await?;
            let mut list: Vec<BindingEntry> = match &entry {
                Some(e) if !e.deleted => {
                    serde_json::from_slice(&e.value).map_err(|err| corrupt(&key, err))?
                }
                _ => Vec::new(),
            };
            if !change(&mut list) {
                return Ok(());
            }
            let bytes = Bytes::from(serde_json::to_vec(&list).expect("bindings serialize"));
            let expected = entry.map_or(0, |e| e.revision);
            match self.bucket.update(&key, bytes, expected).await? {
                Written::Done => return Ok(()),
                Written::Conflict => continue, // another client wrote first
            }
        }
        Err(Error::new(
            ErrorKind::Timeout,
            format!("nats: the bindings of {exchange:?} kept changing under {CAS_TRIES} tries"),
        ))
    }
}
