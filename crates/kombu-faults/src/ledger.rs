//! Reading the peers' logs.
//!
//! The publisher writes `published <id> <attempts>` once a publish of `id`
//! returned `Ok` (after `attempts` tries) and `retry <id> <error>` for each
//! failed try. The consumer writes `got <id> ok` (or `got <id> corrupt`,
//! `corrupt <why>`) *before* it acks, `acked <id>` after the ack returned
//! `Ok`, `ackerr <id> <error>` when it failed, `acking <id>` just before
//! it acks, and `reconnect <why>` when it
//! starts over with a new connection. Several consumers (one killed, the
//! next started) append to one log in turn. A line cut short by SIGKILL is
//! ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

/// What the logs of one run show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Ids the test asked for (0..n).
    pub expected: u64,
    /// Distinct ids whose publish returned `Ok`.
    pub published: usize,
    /// Failed publish tries that were retried.
    pub publish_retries: usize,
    /// Distinct ids received intact.
    pub consumed_unique: usize,
    /// Deliveries received (intact ones, duplicates included).
    pub deliveries: usize,
    /// Deliveries beyond the first of an id.
    pub duplicates: usize,
    /// Duplicates whose previous delivery was never acked (the ack was lost
    /// with the connection or the consumer).
    pub dup_lost_ack: usize,
    /// Duplicates (of an acked delivery) of an id whose publish was retried
    /// (a publish that reached the broker but whose confirmation was lost).
    pub dup_retried_publish: usize,
    /// Duplicates (of an id published once) whose previous delivery was
    /// acked, the ack returned `Ok`, and then the consumer's connection was
    /// lost before the message came again. An AMQP 0-9-1 `basic.ack` has no
    /// reply: `Ok` means written to the socket, and a broker killed before
    /// it read the ack delivers the message again. Transports whose ack has
    /// a reply (redis, beanstalk) must have none of these.
    pub dup_ack_in_flight: BTreeSet<u64>,
    /// Duplicates with no cause above: the previous delivery was acked, the
    /// id was published once, and the consumer kept its connection.
    pub dup_unexplained: BTreeSet<u64>,
    /// Deliveries whose checksum did not match.
    pub corrupt: usize,
    /// Acks that returned an error.
    pub ack_errors: usize,
    /// Times a consumer started over with a new connection.
    pub consumer_reconnects: usize,
    /// Consumer processes that wrote to the log.
    pub consumer_processes: usize,
    /// Ids in 0..n never published.
    pub not_published: BTreeSet<u64>,
    /// Published ids never received.
    pub lost: BTreeSet<u64>,
    /// Published ids never acked, of which an ack was begun (`acking`):
    /// not a fault by itself, as an ack that failed, timed out, or was
    /// under way when its consumer was killed may have been applied, and
    /// then the message never comes again.
    pub never_acked: BTreeSet<u64>,
    /// Published ids received, never acked, and no ack begun: the message
    /// was lost with a consumer and never came again.
    pub unacked_lost: BTreeSet<u64>,
}

fn words(line: &str) -> (&str, Option<u64>) {
    let mut it = line.split_whitespace();
    let verb = it.next().unwrap_or("");
    (verb, it.next().and_then(|w| w.parse().ok()))
}

impl Tally {
    /// Read the publisher's and the consumer's log for ids `0..expected`.
    ///
    /// ```
    /// use kombu_faults::ledger::Tally;
    /// let publisher = "published 0 1\nretry 1 connection lost\npublished 1 2\n";
    /// let consumer = "start 1\ngot 0 ok\ngot 1 ok\nacked 1\nstart 2\ngot 0 ok\nacked 0\n";
    /// let t = Tally::read(publisher, consumer, 2);
    /// assert_eq!((t.published, t.consumed_unique, t.duplicates, t.dup_lost_ack), (2, 2, 1, 1));
    /// assert!(t.problems(true).is_empty());
    /// ```
    pub fn read(publisher: &str, consumer: &str, expected: u64) -> Tally {
        let mut t = Tally {
            expected,
            ..Tally::default()
        };
        let complete = |log: &'_ str| -> Vec<String> {
            // Only lines ended by '\n': a kill may cut the last one short.
            let mut lines: Vec<String> = log.split_inclusive('\n').map(str::to_owned).collect();
            if lines.last().is_some_and(|l| !l.ends_with('\n')) {
                lines.pop();
            }
            lines
        };
        let mut published = BTreeSet::new();
        let mut retried = BTreeSet::new();
        for line in complete(publisher) {
            match words(&line) {
                ("published", Some(id)) => {
                    published.insert(id);
                }
                ("retry", Some(id)) => {
                    t.publish_retries += 1;
                    retried.insert(id);
                }
                _ => {}
            }
        }
        // Per id: the connection epoch its latest delivery was acked in
        // (None: not acked).
        let mut last_acked: BTreeMap<u64, Option<usize>> = BTreeMap::new();
        let mut acked = BTreeSet::new();
        let mut acking = BTreeSet::new();
        let mut epoch = 0usize;
        for line in complete(consumer) {
            let corrupt = line.split_whitespace().nth(2) == Some("corrupt");
            match words(&line) {
                ("start", _) => {
                    t.consumer_processes += 1;
                    epoch += 1;
                }
                ("reconnect", _) => {
                    t.consumer_reconnects += 1;
                    epoch += 1;
                }
                ("corrupt", _) => t.corrupt += 1,
                ("got", Some(_)) if corrupt => t.corrupt += 1,
                ("got", Some(id)) => {
                    t.deliveries += 1;
                    if let Some(previous) = last_acked.insert(id, None) {
                        t.duplicates += 1;
                        match previous {
                            None => t.dup_lost_ack += 1,
                            Some(_) if retried.contains(&id) => t.dup_retried_publish += 1,
                            Some(then) if then < epoch => {
                                t.dup_ack_in_flight.insert(id);
                            }
                            Some(_) => {
                                t.dup_unexplained.insert(id);
                            }
                        }
                    }
                }
                ("acking", Some(id)) => {
                    acking.insert(id);
                }
                ("acked", Some(id)) => {
                    last_acked.insert(id, Some(epoch));
                    acked.insert(id);
                }
                ("ackerr", Some(_)) => t.ack_errors += 1,
                _ => {}
            }
        }
        t.published = published.len();
        t.consumed_unique = last_acked.len();
        t.not_published = (0..expected).filter(|id| !published.contains(id)).collect();
        t.lost = published
            .iter()
            .filter(|id| !last_acked.contains_key(id))
            .copied()
            .collect();
        let (begun, not_begun): (BTreeSet<u64>, BTreeSet<u64>) = published
            .iter()
            .filter(|id| !acked.contains(id) && last_acked.contains_key(id))
            .partition(|id| acking.contains(id));
        t.never_acked = begun;
        t.unacked_lost = not_begun;
        t
    }

    /// What is wrong, one sentence each; empty when the run kept every
    /// promise (all published, all received, nothing corrupt, every
    /// duplicate explained). `acks_confirmed`: the transport's ack returns
    /// `Ok` only once the broker applied it (redis, beanstalk), so an acked
    /// delivery coming again after a reconnect is a fault too.
    pub fn problems(&self, acks_confirmed: bool) -> Vec<String> {
        let mut out = Vec::new();
        let some = |set: &BTreeSet<u64>| {
            let ids: Vec<String> = set.iter().take(10).map(u64::to_string).collect();
            format!("{} (e.g. {})", set.len(), ids.join(", "))
        };
        if !self.not_published.is_empty() {
            out.push(format!("not published: {}", some(&self.not_published)));
        }
        if !self.lost.is_empty() {
            out.push(format!(
                "published but never received: {}",
                some(&self.lost)
            ));
        }
        if !self.unacked_lost.is_empty() {
            out.push(format!(
                "received, never acked (no ack begun) and never delivered again: {}",
                some(&self.unacked_lost)
            ));
        }
        if self.corrupt > 0 {
            out.push(format!("corrupt deliveries: {}", self.corrupt));
        }
        if acks_confirmed && !self.dup_ack_in_flight.is_empty() {
            out.push(format!(
                "duplicates of a delivery acked with a confirmed ack: {}",
                some(&self.dup_ack_in_flight)
            ));
        }
        if !self.dup_unexplained.is_empty() {
            out.push(format!(
                "duplicates of an acked delivery of an id published once: {}",
                some(&self.dup_unexplained)
            ));
        }
        out
    }

    /// The header of [`Tally::row`].
    pub fn header() -> String {
        format!(
            "{:<22} {:>5} {:>5} {:>6} {:>5} {:>8} {:>8} {:>9} {:>6} {:>7} {:>7} {:>6} {:>6}",
            "scenario",
            "pub",
            "cons",
            "deliv",
            "dups",
            "lost-ack",
            "retried",
            "ack-flight",
            "unexpl",
            "corrupt",
            "retries",
            "reconn",
            "time"
        )
    }

    /// One line of counts: published, consumed unique, deliveries,
    /// duplicates, explained by a lost ack, explained by a retried publish,
    /// acked but the ack was in flight when the connection died,
    /// unexplained, corrupt, publish retries, consumer reconnects, time.
    pub fn row(&self, scenario: &str, took: Duration) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "{:<22} {:>5} {:>5} {:>6} {:>5} {:>8} {:>8} {:>9} {:>6} {:>7} {:>7} {:>6} {:>5.1}s",
            scenario,
            self.published,
            self.consumed_unique,
            self.deliveries,
            self.duplicates,
            self.dup_lost_ack,
            self.dup_retried_publish,
            self.dup_ack_in_flight.len(),
            self.dup_unexplained.len(),
            self.corrupt,
            self.publish_retries,
            self.consumer_reconnects,
            took.as_secs_f64()
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duplicate_of_an_acked_delivery_needs_a_retried_publish() {
        let publisher = "published 0 1\npublished 1 2\nretry 1 timeout\n";
        let consumer =
            "got 0 ok\nacked 0\ngot 0 ok\nacked 0\ngot 1 ok\nacked 1\ngot 1 ok\nacked 1\n";
        let t = Tally::read(publisher, consumer, 2);
        assert_eq!(t.duplicates, 2);
        assert_eq!(t.dup_retried_publish, 1);
        assert_eq!(t.dup_unexplained, BTreeSet::from([0]));
        assert_eq!(t.problems(false).len(), 1, "{:?}", t.problems(false));
    }

    #[test]
    fn a_message_held_by_a_killed_consumer_must_come_again() {
        let publisher = "published 0 1\npublished 1 1\n";
        let consumer = "start 1\ngot 0 ok\ngot 1 ok\nacking 1\nstart 2\n";
        let t = Tally::read(publisher, consumer, 2);
        assert_eq!(t.unacked_lost, BTreeSet::from([0]));
        assert_eq!(t.never_acked, BTreeSet::from([1]));
        assert_eq!(t.problems(true).len(), 1, "{:?}", t.problems(true));
    }

    #[test]
    fn an_acked_delivery_may_come_again_after_a_reconnect_when_acks_are_unconfirmed() {
        let publisher = "published 0 1\n";
        let consumer = "start 1\ngot 0 ok\nacked 0\nreconnect connection lost\ngot 0 ok\nacked 0\n";
        let t = Tally::read(publisher, consumer, 1);
        assert_eq!(t.dup_ack_in_flight, BTreeSet::from([0]));
        assert!(t.problems(false).is_empty());
        assert_eq!(t.problems(true).len(), 1);
    }

    #[test]
    fn missing_corrupt_and_cut_lines_are_reported() {
        let publisher = "published 0 1\npublished 1 1\npubli";
        let consumer = "got 0 ok\nacked 0\ngot 1 corrupt\ncorrupt not json\ngot 1 o";
        let t = Tally::read(publisher, consumer, 3);
        assert!(t.unacked_lost.is_empty());
        assert_eq!(t.not_published, BTreeSet::from([2]));
        assert_eq!(t.lost, BTreeSet::from([1]));
        assert_eq!(t.corrupt, 2);
        assert_eq!(t.problems(true).len(), 3, "{:?}", t.problems(true));
    }
}
