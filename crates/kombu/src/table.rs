//! The transport comparison table, made from each transport's capabilities.

use kombu_core::{Capabilities, ExchangeType, Registry};

fn yes_no(yes: bool) -> &'static str {
    if yes {
        "Yes"
    } else {
        "No"
    }
}

fn fanout_cell(caps: &Capabilities) -> String {
    match (
        caps.supports(ExchangeType::Fanout),
        caps.fanout_note.is_empty(),
    ) {
        (false, _) => "No".into(),
        (true, true) => "Yes".into(),
        (true, false) => format!("Yes ({})", caps.fanout_note),
    }
}

/// A Markdown table of the transports in `registry`: schemes, native or
/// virtual, exchange types, priority, TTL, dead-lettering and whether
/// declarations are shared between processes.
///
/// ```
/// let table = kombu::transport_table(&kombu::default_registry());
/// assert!(table.contains("| memory |"));
/// ```
pub fn transport_table(registry: &Registry) -> String {
    let mut out = String::from(
        "| Transport | Schemes | Type | Direct | Topic | Fanout | Headers | Priority | TTL | Dead-letter | Shared declarations |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for factory in registry.factories() {
        let caps = factory.info().static_capabilities();
        let schemes: Vec<String> = factory
            .schemes()
            .iter()
            .map(|s| format!("`{s}://`"))
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            factory.name(),
            schemes.join(" "),
            caps.kind,
            yes_no(caps.supports(ExchangeType::Direct)),
            yes_no(caps.supports(ExchangeType::Topic)),
            fanout_cell(&caps),
            yes_no(caps.supports(ExchangeType::Headers)),
            yes_no(caps.priority),
            yes_no(caps.ttl),
            yes_no(caps.dead_letter),
            yes_no(caps.shared_declarations),
        ));
    }
    out
}
