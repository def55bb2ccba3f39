//! `kombu transports`: what is compiled in, from each transport's capabilities.

use std::sync::Arc;

use kombu::spi::TransportFactory;
use kombu::ExchangeType;
use serde_json::{json, Value};

use crate::cli::TransportsArgs;
use crate::failure::Outcome;

/// One transport as JSON: name, schemes and every capability.
pub fn describe(factory: &Arc<dyn TransportFactory>) -> Value {
    let caps = factory.info().static_capabilities();
    let exchange_types: Vec<&str> = caps.exchange_types.iter().map(|t| t.as_str()).collect();
    json!({
        "name": factory.name(),
        "schemes": factory.schemes(),
        "default_port": factory.info().default_port,
        "tls_port": factory.info().tls_port,
        "feature": factory.info().feature,
        "kind": caps.kind.to_string().to_ascii_lowercase(),
        "exchange_types": exchange_types,
        "fanout": caps.supports(ExchangeType::Fanout),
        "fanout_note": caps.fanout_note,
        "priority": caps.priority,
        "ttl": caps.ttl,
        "dead_letter": caps.dead_letter,
        "max_length": caps.max_length,
        "shared_declarations": caps.shared_declarations,
        "persistent": caps.persistent,
        "redelivers_unacked": caps.redelivers_unacked,
    })
}

fn yes_no(yes: bool) -> String {
    if yes { "yes" } else { "no" }.to_owned()
}

/// The rows of the text table, header first.
fn rows(factories: &[Arc<dyn TransportFactory>]) -> Vec<Vec<String>> {
    let mut rows = vec![[
        "TRANSPORT",
        "SCHEMES",
        "TYPE",
        "EXCHANGE TYPES",
        "FANOUT",
        "PRIORITY",
        "TTL",
        "DEAD-LETTER",
        "SHARED DECLARATIONS",
    ]
    .map(str::to_owned)
    .to_vec()];
    for factory in factories {
        let caps = factory.info().static_capabilities();
        let types: Vec<&str> = caps.exchange_types.iter().map(|t| t.as_str()).collect();
        let fanout = match (
            caps.supports(ExchangeType::Fanout),
            caps.fanout_note.as_str(),
        ) {
            (false, _) => "no".to_owned(),
            (true, "") => "yes".to_owned(),
            (true, note) => format!("yes ({note})"),
        };
        rows.push(vec![
            factory.name().to_owned(),
            factory.schemes().join(","),
            caps.kind.to_string().to_ascii_lowercase(),
            types.join(","),
            fanout,
            yes_no(caps.priority),
            yes_no(caps.ttl),
            yes_no(caps.dead_letter),
            yes_no(caps.shared_declarations),
        ]);
    }
    rows
}

/// Columns padded to their widest cell, two spaces apart.
fn format_table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Print the table (text, `--json` or `--markdown`).
pub fn run(args: &TransportsArgs) -> Outcome {
    let registry = kombu::default_registry();
    if args.markdown {
        print!("{}", kombu::transport_table(&registry));
        return Ok(());
    }
    let factories = registry.factories();
    if args.json {
        let all: Vec<Value> = factories.iter().map(describe).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&all).unwrap_or_else(|_| "[]".into())
        );
    } else {
        print!("{}", format_table(&rows(&factories)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_compiled_in_transport() {
        let factories = kombu::default_registry().factories();
        let table = format_table(&rows(&factories));
        assert!(table.starts_with("TRANSPORT"));
        assert_eq!(table.lines().count(), factories.len() + 1);
        assert!(table.contains("memory"));
    }

    #[test]
    fn json_carries_the_capabilities() {
        let memory = kombu::default_registry().resolve("memory").unwrap();
        let json = describe(&memory);
        assert_eq!(json["name"], "memory");
        assert_eq!(json["kind"], "virtual");
        assert_eq!(json["schemes"][0], "memory");
        assert_eq!(json["fanout"], true);
    }

    #[test]
    fn every_transport_feature_is_listed_with_its_info() {
        let factories = kombu::default_registry().factories();
        for (feature, schemes) in kombu::TRANSPORT_FEATURES {
            // A feature may bring several transports (redis: redis, sentinel).
            let served: Vec<&str> = factories
                .iter()
                .filter(|f| f.info().feature == *feature)
                .flat_map(|f| f.schemes().iter().copied())
                .collect();
            assert!(!served.is_empty(), "{feature} is compiled into the CLI");
            let mut served = served;
            let mut listed = schemes.to_vec();
            served.sort_unstable();
            listed.sort_unstable();
            assert_eq!(served, listed, "schemes of feature {feature}");
        }
        let amqp = describe(&kombu::default_registry().resolve("amqps").unwrap());
        assert_eq!(amqp["default_port"], 5672);
        assert_eq!(amqp["tls_port"], 5671);
        assert_eq!(amqp["feature"], "amqp");
        assert_eq!(amqp["kind"], "native");
    }
}
