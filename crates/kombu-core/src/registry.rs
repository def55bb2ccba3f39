//! Which transport serves which URL scheme.
//!
//! The facade crate `kombu` builds the default registry with one
//! `register` call per enabled cargo feature; anyone may build their own
//! and add a custom transport.

use std::sync::Arc;

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
}
