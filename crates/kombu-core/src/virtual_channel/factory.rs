//! The factory of every virtual transport: a transport gives its
//! [`TransportInfo`] and an async function that opens its backend;
//! [`VirtualFactory`] makes the [`TransportFactory`] from them.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;

use super::{VirtualBackend, VirtualOptions, VirtualTransport};
use crate::error::Result;
use crate::options::ConnectionOptions;
use crate::transport::{Transport, TransportFactory};
use crate::transport_info::TransportInfo;
use crate::url::BrokerUrl;

/// A [`TransportFactory`] for a virtual transport: `open` makes a backend
/// for a URL (completed with the transport's defaults) and the options
/// (the URL's query applied), and the factory serves it as a
/// [`VirtualTransport`] (liveness, bounds, channels: the core's). The
/// `unroutable_queue` and `operation_timeout` transport options are the
/// core's. That is the whole glue between a store and kombu-rs:
///
/// ```
/// # use kombu_core::spi::{VirtualBackend, VirtualFactory};
/// # use kombu_core::{BrokerUrl, ConnectionOptions, Registry, Result, TransportInfo, TransportKind};
/// # fn demo<B: VirtualBackend + Default>() {
/// const INFO: TransportInfo = TransportInfo::new("toy", &["toy"], TransportKind::Virtual);
///
/// async fn open<B: Default>(url: BrokerUrl, options: ConnectionOptions) -> Result<B> {
///     # let _ = (url, options);
///     Ok(B::default()) // connect to the store here
/// }
///
/// let mut registry = Registry::new();
/// registry.register(VirtualFactory::shared(&INFO, open::<B>));
/// assert!(registry.resolve("toy").is_ok());
/// # }
/// ```
#[derive(Clone, Copy)]
pub struct VirtualFactory<F> {
    info: &'static TransportInfo,
    open: F,
}

impl<F> VirtualFactory<F> {
    /// A factory for the transport `info` describes, whose backends `open` makes.
    pub const fn new(info: &'static TransportInfo, open: F) -> Self {
        VirtualFactory { info, open }
    }
}

impl<F, Fut, B> VirtualFactory<F>
where
    F: Fn(BrokerUrl, ConnectionOptions) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<B>> + Send + 'static,
    B: VirtualBackend,
{
    /// [`VirtualFactory::new`], ready for [`Registry::register`](crate::Registry::register).
    pub fn shared(info: &'static TransportInfo, open: F) -> Arc<dyn TransportFactory> {
        Arc::new(Self::new(info, open))
    }
}

#[async_trait]
impl<F, Fut, B> TransportFactory for VirtualFactory<F>
where
    F: Fn(BrokerUrl, ConnectionOptions) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<B>> + Send + 'static,
    B: VirtualBackend,
{
    fn info(&self) -> &'static TransportInfo {
        self.info
    }

    async fn connect(
        &self,
        url: &BrokerUrl,
        options: &ConnectionOptions,
    ) -> Result<Arc<dyn Transport>> {
        let virtual_options = VirtualOptions::from_transport_options(&options.transport_options)?
            .transport_name(self.info.name);
        let backend = (self.open)(url.clone(), options.clone()).await?;
        Ok(Arc::new(VirtualTransport::new(backend, virtual_options)))
    }
}
