//! The factory of every virtual transport: a transport says how to open its
//! backend ([`ConnectBackend`]); [`VirtualFactory`] makes the
//! [`TransportFactory`] from it.

use std::sync::Arc;

use async_trait::async_trait;

use super::{VirtualBackend, VirtualOptions, VirtualTransport};
use crate::error::Result;
use crate::options::ConnectionOptions;
use crate::transport::{Transport, TransportFactory};
use crate::transport_info::TransportInfo;
use crate::url::BrokerUrl;

/// How a virtual transport opens its backend: the whole glue between a
/// store and kombu-rs (liveness, bounds, channels, the factory come from
/// the core).
///
/// ```
/// # use kombu_core::spi::{ConnectBackend, VirtualBackend, VirtualFactory};
/// # use kombu_core::{BrokerUrl, ConnectionOptions, Result, TransportInfo, TransportKind};
/// # fn demo<B: VirtualBackend + Default>() {
/// struct Toy<B>(std::marker::PhantomData<B>);
/// const INFO: TransportInfo = TransportInfo::new("toy", &["toy"], TransportKind::Virtual);
///
/// #[kombu_core::spi::async_trait]
/// impl<B: VirtualBackend + Default> ConnectBackend for Toy<B> {
///     type Backend = B;
///     fn info(&self) -> &'static TransportInfo { &INFO }
///     async fn connect_backend(&self, _: &BrokerUrl, _: &ConnectionOptions) -> Result<B> {
///         Ok(B::default())
///     }
/// }
/// let mut registry = kombu_core::Registry::new();
/// registry.register(std::sync::Arc::new(VirtualFactory(Toy::<B>(Default::default()))));
/// assert!(registry.resolve("toy").is_ok());
/// # }
/// ```
#[async_trait]
pub trait ConnectBackend: Send + Sync + 'static {
    /// The backend it opens.
    type Backend: VirtualBackend;
    /// The transport's static description.
    fn info(&self) -> &'static TransportInfo;
    /// Open a backend for `url` (completed with the transport's defaults)
    /// and `options` (the URL's query applied). The `unroutable_queue` and
    /// `operation_timeout` transport options are the core's.
    async fn connect_backend(
        &self,
        url: &BrokerUrl,
        options: &ConnectionOptions,
    ) -> Result<Self::Backend>;
}

/// A [`TransportFactory`] for a virtual transport: opens the backend with
/// `C` and serves it as a [`VirtualTransport`].
#[derive(Debug, Clone, Copy, Default)]
pub struct VirtualFactory<C>(pub C);

#[async_trait]
impl<C: ConnectBackend> TransportFactory for VirtualFactory<C> {
    fn info(&self) -> &'static TransportInfo {
        self.0.info()
    }

    async fn connect(
        &self,
        url: &BrokerUrl,
        options: &ConnectionOptions,
    ) -> Result<Arc<dyn Transport>> {
        let virtual_options = VirtualOptions::from_transport_options(&options.transport_options)?
            .transport_name(self.0.info().name);
        let backend = self.0.connect_backend(url, options).await?;
        Ok(Arc::new(VirtualTransport::new(backend, virtual_options)))
    }
}
