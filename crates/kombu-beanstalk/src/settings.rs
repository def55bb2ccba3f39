//! Transport options of `beanstalk://` and the priority mapping.

use std::time::Duration;

use kombu_core::{Error, ErrorKind, Result, TransportOptions};

/// Transport options `beanstalk://` understands.
pub const KNOWN_OPTIONS: &[&str] = &[
    "ttr",
    "priority_mapping",
    "priority_base",
    "polling_interval",
    "requeue_delay",
    "max_reserve_connections",
    "pool_size",
    "socket_timeout",
];

/// How a message priority (AMQP meaning, 0..=255, higher first) becomes a
/// beanstalk job priority (0..2^32, lower first).
///
/// ```
/// use kombu_beanstalk::PriorityMapping;
/// let m = PriorityMapping::default();
/// assert_eq!(m.to_beanstalk(0), 1024);
/// assert_eq!(m.to_beanstalk(9), 1015);
/// assert!(m.to_beanstalk(9) < m.to_beanstalk(0)); // 9 is served first
/// assert_eq!(PriorityMapping::Direct.to_beanstalk(9), 9);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PriorityMapping {
    /// `pri = base - priority` (the default, base 1024): higher message
    /// priorities are more urgent, as in AMQP. `priority_mapping=inverted`.
    Inverted {
        /// The beanstalk priority of a message with priority 0.
        base: u32,
    },
    /// `pri = priority`, what kombu 3.0.37 did (it passed the message
    /// priority through, so a higher number was served later).
    /// `priority_mapping=direct`.
    Direct,
}

impl Default for PriorityMapping {
    fn default() -> Self {
        PriorityMapping::Inverted { base: 1024 }
    }
}

impl PriorityMapping {
    /// The beanstalk priority for a message priority.
    pub fn to_beanstalk(self, priority: u8) -> u32 {
        match self {
            PriorityMapping::Inverted { base } => base.saturating_sub(u32::from(priority)),
            PriorityMapping::Direct => u32::from(priority),
        }
    }
}

/// Settings of one transport, read from its transport options.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) ttr: u32,
    pub(crate) priority: PriorityMapping,
    pub(crate) polling_interval: Duration,
    pub(crate) requeue_delay: u32,
    pub(crate) max_reservers: usize,
    pub(crate) pool_size: usize,
    /// How long a command waits for beanstalkd's answer (`None`: forever).
    pub(crate) socket_timeout: Option<Duration>,
}

fn bad(key: &str, why: &str) -> Error {
    Error::new(ErrorKind::InvalidOption, format!("{key}: {why}"))
}

fn whole_seconds(options: &TransportOptions, key: &str) -> Result<Option<u32>> {
    match options.get_duration_secs(key)? {
        None => Ok(None),
        Some(d) => {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            u32::try_from(secs)
                .map(Some)
                .map_err(|_| bad(key, "too large"))
        }
    }
}

impl Settings {
    pub(crate) fn from_options(options: &TransportOptions) -> Result<Settings> {
        options.check_known(
            &[KNOWN_OPTIONS, kombu_core::spi::VIRTUAL_OPTIONS].concat(),
            "beanstalk",
        )?;
        let ttr = whole_seconds(options, "ttr")?.unwrap_or(120);
        if ttr == 0 {
            return Err(bad("ttr", "must be at least 1 second"));
        }
        let base = match options.get_u64("priority_base")? {
            None => 1024,
            Some(b) if (255..=u64::from(u32::MAX)).contains(&b) => b as u32,
            Some(_) => return Err(bad("priority_base", "must be between 255 and 4294967295")),
        };
        let priority = match options.get_str("priority_mapping")? {
            None | Some("inverted") => PriorityMapping::Inverted { base },
            Some("direct") => PriorityMapping::Direct,
            Some(other) => {
                return Err(bad(
                    "priority_mapping",
                    &format!("{other:?} is not \"inverted\" or \"direct\""),
                ))
            }
        };
        let polling_interval = options
            .get_duration_secs("polling_interval")?
            .unwrap_or(Duration::from_secs(1));
        let requeue_delay = whole_seconds(options, "requeue_delay")?.unwrap_or(0);
        let max_reservers = options
            .get_u64("max_reserve_connections")?
            .unwrap_or(64)
            .max(1) as usize;
        let pool_size = options.get_u64("pool_size")?.unwrap_or(4).clamp(1, 256) as usize;
        // 0 waits forever, as a socket timeout of 0 does nowhere else; it is
        // accepted for people who really want it.
        let socket_timeout = match options.get_duration_secs("socket_timeout")? {
            None => Some(crate::protocol::DEFAULT_IO_TIMEOUT),
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
        };
        Ok(Settings {
            ttr,
            priority,
            polling_interval,
            requeue_delay,
            max_reservers,
            pool_size,
            socket_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let s = Settings::from_options(&TransportOptions::new()).unwrap();
        assert_eq!(s.ttr, 120);
        assert_eq!(s.priority, PriorityMapping::Inverted { base: 1024 });
        assert_eq!(s.polling_interval, Duration::from_secs(1));
        assert_eq!(s.socket_timeout, Some(Duration::from_secs(10)));
        let s =
            Settings::from_options(&TransportOptions::new().set("socket_timeout", 0.5)).unwrap();
        assert_eq!(s.socket_timeout, Some(Duration::from_millis(500)));
        let s = Settings::from_options(
            &TransportOptions::new()
                .set("ttr", 2.5)
                .set("priority_mapping", "direct"),
        )
        .unwrap();
        assert_eq!(s.ttr, 3);
        assert_eq!(s.priority, PriorityMapping::Direct);
        for bad in [
            TransportOptions::new().set("ttr", 0),
            TransportOptions::new().set("priority_mapping", "upside-down"),
            TransportOptions::new().set("priority_base", 3),
            TransportOptions::new().set("nosuch", 1),
        ] {
            let err = Settings::from_options(&bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidOption, "{err}");
        }
    }
}
