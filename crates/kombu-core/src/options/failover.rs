//! [`FailoverStrategy`]: in which order the URLs of a failover list are tried.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use super::value::invalid_value;
use crate::error::{Error, Result};

/// In which order the URLs of a failover list are tried (kombu's
/// `failover_strategy`).
///
/// ```
/// use kombu_core::FailoverStrategy;
///
/// assert_eq!(FailoverStrategy::default(), FailoverStrategy::RoundRobin);
/// assert_eq!("shuffle".parse::<FailoverStrategy>()?, FailoverStrategy::Shuffle);
/// assert_eq!(FailoverStrategy::RoundRobin.to_string(), "round-robin");
/// # Ok::<(), kombu_core::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailoverStrategy {
    /// In the given order, starting with the last URL that worked and
    /// going on with the next one (`round-robin`).
    #[default]
    RoundRobin,
    /// In a new random order on each attempt (`shuffle`).
    Shuffle,
    /// In the order a function of yours chooses (kombu's callable
    /// `failover_strategy`): see [`FailoverStrategy::custom`].
    Custom(CustomFailover),
}

/// The order function of [`FailoverStrategy::Custom`]: given the URLs and
/// the index of the last one that worked, the indexes to try, in order.
pub type FailoverOrderFn = dyn Fn(&[crate::url::BrokerUrl], usize) -> Vec<usize> + Send + Sync;

/// A user's failover order (compared by identity).
#[derive(Clone)]
pub struct CustomFailover(pub std::sync::Arc<FailoverOrderFn>);

impl fmt::Debug for CustomFailover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CustomFailover(..)")
    }
}

impl PartialEq for CustomFailover {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for CustomFailover {}

impl FailoverStrategy {
    /// kombu's name: `round-robin` or `shuffle`.
    ///
    /// ```
    /// # use kombu_core::FailoverStrategy;
    /// assert_eq!(FailoverStrategy::Shuffle.as_str(), "shuffle");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            FailoverStrategy::RoundRobin => "round-robin",
            FailoverStrategy::Shuffle => "shuffle",
            FailoverStrategy::Custom(_) => "custom",
        }
    }

    /// Try the URLs in the order `order` returns: it gets the URLs and the
    /// index of the last one that worked (0 at first) and returns indexes
    /// (out-of-range ones are ignored; an empty list means round-robin).
    ///
    /// ```
    /// use kombu_core::FailoverStrategy;
    /// // Always the first URL first, then the others in reverse.
    /// let strategy = FailoverStrategy::custom(|urls, _last| {
    ///     let mut order: Vec<usize> = (1..urls.len()).rev().collect();
    ///     order.insert(0, 0);
    ///     order
    /// });
    /// assert_eq!(strategy.as_str(), "custom");
    /// ```
    pub fn custom(
        order: impl Fn(&[crate::url::BrokerUrl], usize) -> Vec<usize> + Send + Sync + 'static,
    ) -> Self {
        FailoverStrategy::Custom(CustomFailover(std::sync::Arc::new(order)))
    }

    /// The indexes of `urls` to try, in order, when `last` worked last.
    pub fn order(&self, urls: &[crate::url::BrokerUrl], last: usize) -> Vec<usize> {
        let count = urls.len();
        let round_robin = || (0..count).map(|step| (last + step) % count).collect();
        match self {
            FailoverStrategy::RoundRobin => round_robin(),
            FailoverStrategy::Shuffle => {
                let mut order: Vec<usize> = (0..count).collect();
                fastrand::shuffle(&mut order);
                order
            }
            FailoverStrategy::Custom(custom) => {
                let order: Vec<usize> = (custom.0)(urls, last)
                    .into_iter()
                    .filter(|index| *index < count)
                    .collect();
                if order.is_empty() {
                    round_robin()
                } else {
                    order
                }
            }
        }
    }
}

impl fmt::Display for FailoverStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FailoverStrategy {
    type Err = Error;

    /// `round-robin` (or `round_robin`) and `shuffle`, in any case.
    ///
    /// ```
    /// # use kombu_core::FailoverStrategy;
    /// assert_eq!("Round_Robin".parse::<FailoverStrategy>()?, FailoverStrategy::RoundRobin);
    /// assert!("random".parse::<FailoverStrategy>().is_err());
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    fn from_str(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "round-robin" => Ok(FailoverStrategy::RoundRobin),
            "shuffle" => Ok(FailoverStrategy::Shuffle),
            _ => Err(invalid_value(
                "failover_strategy",
                &Value::from(name),
                "round-robin or shuffle",
            )),
        }
    }
}
