//! SQS and SNS names made from AMQP names, exactly as Python kombu 5.7 does
//! (`kombu.transport.SQS.Channel.entity_name`).
//!
//! Every ASCII punctuation character except `-`, `_` and `.` becomes `_`;
//! `.` becomes `-`; a trailing `.fifo` is kept (it marks a FIFO queue).
//! Letters, digits and every non-ASCII character are left as they are
//! (SQS then refuses the name if it holds characters it does not take).
//! The prefix (`queue_name_prefix`) is added before the rule is applied.

use kombu_core::{Error, ErrorKind, Result};

/// The suffix of FIFO queue and topic names.
pub const FIFO_SUFFIX: &str = ".fifo";

/// The longest SQS queue (and SNS topic) name, `.fifo` included.
pub const MAX_NAME_LEN: usize = 80;

/// kombu's `entity_name`: `name` with the characters SQS refuses replaced.
///
/// ```
/// use kombu_sqs::entity_name;
/// assert_eq!(entity_name("cap.sqs.q"), "cap-sqs-q");
/// assert_eq!(entity_name("celery@host:pid"), "celery_host_pid");
/// assert_eq!(entity_name("orders.v1.fifo"), "orders-v1.fifo");
/// ```
pub fn entity_name(name: &str) -> String {
    match name.strip_suffix(FIFO_SUFFIX) {
        Some(stem) => format!("{}{FIFO_SUFFIX}", translate(stem)),
        None => translate(name),
    }
}

fn translate(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' => '-',
            '-' | '_' => c,
            c if c.is_ascii_punctuation() => '_',
            c => c,
        })
        .collect()
}

/// `entity_name(prefix + name)`, checked against SQS's length limit.
pub(crate) fn canonical(prefix: &str, name: &str) -> Result<String> {
    let sqs_name = entity_name(&format!("{prefix}{name}"));
    if sqs_name.is_empty() || sqs_name.chars().count() > MAX_NAME_LEN {
        return Err(Error::new(
            ErrorKind::InvalidOption,
            format!(
                "{name:?} makes the SQS/SNS name {sqs_name:?}: names must be 1 to \
                 {MAX_NAME_LEN} characters (queue_name_prefix included)"
            ),
        ));
    }
    Ok(sqs_name)
}

/// True for a FIFO queue or topic name.
pub(crate) fn is_fifo(sqs_name: &str) -> bool {
    sqs_name.ends_with(FIFO_SUFFIX)
}

/// The name of the standard SQS queue whose tags hold an exchange's type
/// and bindings: `<prefix>kombu-exchange-<exchange>` (a `.fifo` suffix of
/// the exchange becomes `-fifo`: the marker is a standard queue).
pub(crate) fn exchange_marker(prefix: &str, exchange: &str) -> Result<String> {
    let stem = match exchange.strip_suffix(FIFO_SUFFIX) {
        Some(stem) => format!("{stem}-fifo"),
        None => exchange.to_owned(),
    };
    canonical(prefix, &format!("kombu-exchange-{stem}"))
}

/// FNV-1a 64: a stable short key for tags (the same in every process and
/// every build, unlike `std`'s hasher).
pub(crate) fn stable_hash(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Python: {ord(c): 0x5f for c in string.punctuation if c not in '-_.'}
    /// plus '.' -> '-', applied with str.translate.
    fn kombu_rule(name: &str) -> String {
        const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
        name.chars()
            .map(|c| {
                if c == '.' {
                    '-'
                } else if PUNCTUATION.contains(c) && !"-_.".contains(c) {
                    '_'
                } else {
                    c
                }
            })
            .collect()
    }

    #[test]
    fn matches_kombu_on_every_ascii_character() {
        let all: String = (0u8..128).map(char::from).collect();
        assert_eq!(entity_name(&all), kombu_rule(&all));
    }

    #[test]
    fn matches_python_kombu_output() {
        // Printed by kombu 5.7: Channel.entity_name(None, <chars 32..127>).
        let printable: String = (32u8..127).map(char::from).collect();
        assert_eq!(
            entity_name(&printable),
            " ____________--_0123456789_______ABCDEFGHIJKLMNOPQRSTUVWXYZ______abcdefghijklmnopqrstuvwxyz____"
        );
    }

    #[test]
    fn dots_become_dashes_and_punctuation_underscores() {
        assert_eq!(entity_name("cap.sqs.q"), "cap-sqs-q");
        assert_eq!(entity_name("a-b_c"), "a-b_c");
        assert_eq!(entity_name("celery.pidbox@host:1"), "celery-pidbox_host_1");
        assert_eq!(entity_name("x/y#z*"), "x_y_z_");
        assert_eq!(entity_name("caf\u{e9} q"), "caf\u{e9} q");
    }

    #[test]
    fn fifo_suffix_is_kept() {
        assert_eq!(entity_name("a.b.fifo"), "a-b.fifo");
        assert_eq!(entity_name(".fifo"), ".fifo");
        assert_eq!(entity_name("a.fifo.x"), "a-fifo-x");
    }

    #[test]
    fn prefix_is_translated_too() {
        assert_eq!(canonical("dev.", "q.1").unwrap(), "dev-q-1");
        assert!(canonical("", &"x".repeat(81)).is_err());
        assert!(canonical("", "").is_err());
    }

    #[test]
    fn exchange_markers_are_standard_queues() {
        assert_eq!(
            exchange_marker("p.", "ex.fifo").unwrap(),
            "p-kombu-exchange-ex-fifo"
        );
        assert!(!is_fifo(&exchange_marker("", "ex.fifo").unwrap()));
    }

    #[test]
    fn stable_hash_is_stable() {
        assert_eq!(stable_hash(b""), "cbf29ce484222325");
        assert_eq!(stable_hash(b"a"), "af63dc4c8601ec8c");
    }
}
