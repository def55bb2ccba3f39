//! Which transport serves which URL scheme.
//!
//! The facade crate `kombu` builds the default registry with one
//! `register` call per enabled cargo feature; anyone may build their own
//! and add a custom transport.

use std::sync::{Arc, OnceLock, RwLock};

use crate::error::{Error, ErrorKind, Result};
use crate::transport::TransportFactory;

/// A set of transport factories, looked up by URL scheme.
///
/// ```
/// use kombu_core::{ErrorKind, Registry};
/// let mut registry = Registry::new();
/// registry.register_disabled(&["redis", "rediss"], "redis");
/// let err = registry.resolve("redis").err().unwrap();
/// assert_eq!(err.kind(), ErrorKind::FeatureDisabled);
/// assert!(err.to_string().contains("features = [\"redis\"]"));
/// let err = registry.resolve("nope").err().unwrap();
/// assert_eq!(err.kind(), ErrorKind::UnknownScheme);
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    factories: Vec<Arc<dyn TransportFactory>>,
    disabled: Vec<(&'static [&'static str], &'static str)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("schemes", &self.schemes())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a transport. A later registration of a scheme wins over an
    /// earlier one, so users can replace a built-in transport.
    pub fn register(&mut self, factory: Arc<dyn TransportFactory>) -> &mut Self {
        self.factories.insert(0, factory);
        self
    }

    /// Record schemes whose transport exists but whose cargo `feature` is
    /// off, so resolving them says which feature to enable.
    pub fn register_disabled(
        &mut self,
        schemes: &'static [&'static str],
        feature: &'static str,
    ) -> &mut Self {
        self.disabled.push((schemes, feature));
        self
    }

    /// The factory serving `scheme` (case-insensitive). A scheme like
    /// `redis+socket` that is not registered itself falls back to the part
    /// before the `+`.
    pub fn resolve(&self, scheme: &str) -> Result<Arc<dyn TransportFactory>> {
        let scheme = scheme.to_ascii_lowercase();
        if self.factories.is_empty() && self.disabled.is_empty() {
            return Err(Error::new(
                ErrorKind::UnknownScheme,
                format!(
                    "no transport for scheme {scheme:?}: no transports are installed \
                     (call kombu::install_default_transports() first, or \
                     Registry::install for your own)"
                ),
            ));
        }
        if let Some(found) = self.find(&scheme) {
            return Ok(found);
        }
        if let Some((head, _)) = scheme.split_once('+') {
            if let Some(found) = self.find(head) {
                return Ok(found);
            }
        }
        let base = scheme.split('+').next().unwrap_or_default();
        if let Some((_, feature)) = self
            .disabled
            .iter()
            .find(|(schemes, _)| schemes.iter().any(|s| *s == scheme || *s == base))
        {
            return Err(Error::new(
                ErrorKind::FeatureDisabled,
                format!(
                    "the {scheme:?} transport is not compiled in: enable the cargo feature \
                     {feature:?} of the kombu crate (kombu = {{ features = [\"{feature}\"] }})"
                ),
            ));
        }
        let known = self.schemes();
        Err(Error::new(
            ErrorKind::UnknownScheme,
            format!(
                "no transport for scheme {scheme:?}; compiled in: {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        ))
    }

    fn find(&self, scheme: &str) -> Option<Arc<dyn TransportFactory>> {
        self.factories
            .iter()
            .find(|f| f.schemes().iter().any(|s| s.eq_ignore_ascii_case(scheme)))
            .cloned()
    }

    /// Every scheme served, sorted.
    pub fn schemes(&self) -> Vec<&'static str> {
        let mut all: Vec<&'static str> = self
            .factories
            .iter()
            .flat_map(|f| f.schemes().iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The registered factories, one per transport (a replaced one is left out).
    pub fn factories(&self) -> Vec<Arc<dyn TransportFactory>> {
        let mut seen: Vec<&'static str> = Vec::new();
        let mut out = Vec::new();
        for f in self.factories.iter() {
            if !seen.contains(&f.name()) {
                seen.push(f.name());
                out.push(f.clone());
            }
        }
        out.sort_by_key(|f| f.name());
        out
    }

    /// Add what `other` holds after what this one holds: its transports
    /// serve only schemes no transport here serves.
    pub fn extend_fallback(&mut self, other: Registry) -> &mut Self {
        self.factories.extend(other.factories);
        self.disabled.extend(other.disabled);
        self
    }

    /// True when no transport is registered.
    pub fn is_empty(&self) -> bool {
        self.factories.is_empty()
    }

    /// The process-wide registry that [`Connection::new`](crate::Connection::new),
    /// [`ConnectionPool::new`](crate::ConnectionPool::new) and the CLI use: a
    /// snapshot (later installs do not change it). Empty until transports
    /// are installed: the `kombu` crate's `install_default_transports()`
    /// installs every compiled-in transport.
    ///
    /// ```
    /// use kombu_core::Registry;
    /// let before = Registry::global();
    /// Registry::update_global(|r| { r.register_disabled(&["nope"], "nope"); });
    /// assert!(Registry::global().resolve("nope").is_err());
    /// # let _ = before;
    /// ```
    pub fn global() -> Arc<Registry> {
        global_cell()
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Change the global registry (connections made before keep theirs).
    pub fn update_global(change: impl FnOnce(&mut Registry)) {
        let mut slot = global_cell().write().unwrap_or_else(|e| e.into_inner());
        let mut next = Registry::clone(&slot);
        change(&mut next);
        *slot = Arc::new(next);
    }

    /// Add `factory` to the global registry (it wins over earlier ones for
    /// its schemes).
    pub fn install(factory: Arc<dyn TransportFactory>) {
        Self::update_global(|r| {
            r.register(factory);
        });
    }
}

fn global_cell() -> &'static RwLock<Arc<Registry>> {
    static GLOBAL: OnceLock<RwLock<Arc<Registry>>> = OnceLock::new();
    GLOBAL.get_or_init(|| RwLock::new(Arc::new(Registry::new())))
}
