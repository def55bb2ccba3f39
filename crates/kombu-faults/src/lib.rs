//! Fault tests for kombu-rs: a publisher and a consumer (the `fault-peer`
//! binary) exchange numbered, checksummed, persistent messages through a
//! private broker process while the test SIGKILLs the broker and restarts
//! it, SIGSTOPs it past the heartbeat, or SIGKILLs the consumer mid-batch.
//! The peers' logs then show whether every message arrived, none was
//! corrupt, and every duplicate has a cause.
//!
//! The library holds the three pieces the tests and the peer share:
//! [`body`] (message bodies with a checksum), [`broker`] (private redis,
//! RabbitMQ and beanstalkd processes with persistence) and [`ledger`]
//! (reading the peers' logs into a [`ledger::Tally`]).
//!
//! ```
//! let body = kombu_faults::body::make(7);
//! assert_eq!(kombu_faults::body::check(&body), kombu_faults::body::Check::Ok(7));
//! ```

pub mod body;
pub mod broker;
pub mod ledger;
pub mod peer;
pub mod rabbit_cluster;
pub mod redis_cluster;
pub mod sentinel;
