//! A fault-injecting virtual transport for the core's tests: the memory
//! backend, with errors, hangs and reduced capabilities on demand.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kombu_core::spi::{
    async_trait, Fetched, QueueBinding, Receipt, VirtualBackend, VirtualFactory,
};
use kombu_core::{
    BrokerUrl, Capabilities, Connection, ConnectionOptions, Envelope, Error, ErrorKind, Exchange,
    ExchangeType, Queue, Registry, Result, TransportInfo, TransportKind,
};
use kombu_memory::MemoryBackend;

/// What the next backend calls do; shared by every backend a [`Faulty`]
/// connector opens.
#[derive(Default)]
pub struct Faults {
    /// Every call fails with this kind while set.
    pub fail_with: Mutex<Option<ErrorKind>>,
    /// Only `put` fails with this kind, `n` times.
    pub put_fails: Mutex<Option<(ErrorKind, u32)>>,
    /// Calls hang (until the core's bound ends them) while set.
    pub hang: AtomicBool,
    /// `ping` fails with a connection error while set.
    pub ping_fails: AtomicBool,
    /// The backend reports no fanout.
    pub no_fanout: AtomicBool,
    /// Backends opened so far (connections made).
    pub opened: AtomicU32,
    /// Connect attempts refused while > 0 (each refusal counts down).
    pub refuse_connects: AtomicU32,
}

impl Faults {
    pub fn fail_with(&self, kind: Option<ErrorKind>) {
        *self.fail_with.lock().unwrap() = kind;
    }

    async fn enter(&self) -> Result<()> {
        if let Some(kind) = *self.fail_with.lock().unwrap() {
            return Err(Error::new(kind, format!("injected {kind:?}")));
        }
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

pub const INFO: TransportInfo = TransportInfo::new("faulty", &["faulty"], TransportKind::Virtual)
    .feature("faulty")
    .port(4242)
    .capabilities(|| Capabilities::new(TransportKind::Virtual).with_fanout_note("in-process"));

/// Open a faulty backend over memory.
async fn open(
    faults: Arc<Faults>,
    url: BrokerUrl,
    options: ConnectionOptions,
) -> Result<FaultyBackend> {
    let refused = faults
        .refuse_connects
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if refused {
        return Err(Error::new(ErrorKind::ConnectionRefused, "injected refusal"));
    }
    let inner = kombu_memory::open(url.with_scheme("memory")?, options).await?;
    faults.opened.fetch_add(1, Ordering::SeqCst);
    Ok(FaultyBackend { inner, faults })
}

/// The faulty transport's factory.
pub fn factory(faults: &Arc<Faults>) -> Arc<dyn kombu_core::spi::TransportFactory> {
    let faults = faults.clone();
    VirtualFactory::shared(&INFO, move |url, options| {
        open(faults.clone(), url, options)
    })
}

/// The memory backend with faults.
pub struct FaultyBackend {
    inner: MemoryBackend,
    pub faults: Arc<Faults>,
}

/// A registry with the faulty transport and the memory one.
pub fn registry(faults: &Arc<Faults>) -> Arc<Registry> {
    let mut registry = Registry::new();
    kombu_memory::register(&mut registry);
    registry.register(factory(faults));
    Arc::new(registry)
}

/// A faulty connection on its own in-process broker, with `query`.
pub fn connection(faults: &Arc<Faults>, query: &str) -> Connection {
    let url = format!(
        "faulty://{}/?polling_interval=0.02{}{query}",
        kombu_testkit::unique("faulty"),
        if query.is_empty() { "" } else { "&" }
    );
    Connection::with_registry(&url, registry(faults)).expect("faulty URL")
}

macro_rules! guarded {
    ($self:ident, $call:expr) => {{
        $self.faults.enter().await?;
        $call.await
    }};
}

#[async_trait]
impl VirtualBackend for FaultyBackend {
    fn capabilities(&self) -> Capabilities {
        let caps = self.inner.capabilities();
        if self.faults.no_fanout.load(Ordering::SeqCst) {
            caps.with_exchange_types(&[
                ExchangeType::Direct,
                ExchangeType::Topic,
                ExchangeType::Headers,
            ])
        } else {
            caps
        }
    }
    async fn new_queue(&self, queue: &Queue) -> Result<()> {
        guarded!(self, self.inner.new_queue(queue))
    }
    async fn queue_declaration(&self, queue: &str) -> Result<Option<Queue>> {
        guarded!(self, self.inner.queue_declaration(queue))
    }
    async fn has_queue(&self, queue: &str) -> Result<bool> {
        guarded!(self, self.inner.has_queue(queue))
    }
    async fn delete_queue(&self, queue: &str) -> Result<()> {
        guarded!(self, self.inner.delete_queue(queue))
    }
    async fn purge(&self, queue: &str) -> Result<u64> {
        guarded!(self, self.inner.purge(queue))
    }
    async fn size(&self, queue: &str) -> Result<u64> {
        guarded!(self, self.inner.size(queue))
    }
    async fn put(&self, queue: &str, envelope: &Envelope, priority: u8) -> Result<()> {
        self.put_owned(queue, envelope.clone(), priority).await
    }
    async fn put_owned(&self, queue: &str, envelope: Envelope, priority: u8) -> Result<()> {
        {
            let mut put_fails = self.faults.put_fails.lock().unwrap();
            if let Some((kind, n)) = *put_fails {
                *put_fails = n.checked_sub(1).filter(|n| *n > 0).map(|n| (kind, n));
                return Err(Error::new(kind, format!("injected {kind:?} on put")));
            }
        }
        guarded!(self, self.inner.put_owned(queue, envelope, priority))
    }
    async fn fetch(&self, queues: &[String], wait: Duration) -> Result<Option<Fetched>> {
        guarded!(self, self.inner.fetch(queues, wait))
    }
    async fn ack(&self, queue: &str, receipt: &Receipt) -> Result<()> {
        guarded!(self, self.inner.ack(queue, receipt))
    }
    async fn requeue(&self, queue: &str, receipt: &Receipt, envelope: &Envelope) -> Result<()> {
        guarded!(self, self.inner.requeue(queue, receipt, envelope))
    }
    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        guarded!(self, self.inner.declare_exchange(exchange))
    }
    async fn exchange(&self, name: &str) -> Result<Option<Exchange>> {
        guarded!(self, self.inner.exchange(name))
    }
    async fn delete_exchange(&self, name: &str) -> Result<()> {
        guarded!(self, self.inner.delete_exchange(name))
    }
    async fn bind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        guarded!(self, self.inner.bind(exchange, binding))
    }
    async fn unbind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        guarded!(self, self.inner.unbind(exchange, binding))
    }
    async fn bindings(&self, exchange: &str) -> Result<Vec<QueueBinding>> {
        guarded!(self, self.inner.bindings(exchange))
    }
    fn polling_interval(&self) -> Duration {
        self.inner.polling_interval()
    }
    async fn ping(&self) -> Result<()> {
        if self.faults.ping_fails.load(Ordering::SeqCst) {
            return Err(Error::new(
                ErrorKind::ConnectionLost,
                "injected ping failure",
            ));
        }
        guarded!(self, self.inner.ping())
    }
}
