//! AMQP field tables (message headers and arguments as a broker sends
//! them) converted to JSON and back, as kombu-amqp does. Input starting
//! with `{` is a JSON object (headers a user publishes); anything else is
//! parsed as a field table on the wire by lapin's parser. Never a panic,
//! and JSON -> table -> JSON reaches a fixed point after one conversion
//! (the first may turn an integer past i64::MAX into a double).
#![no_main]

use kombu_amqp::fuzzing::{from_field_table, parse_field_table, to_field_table};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let json: Map<String, Value> = if data.first() == Some(&b'{') {
        let Ok(map) = serde_json::from_slice(data) else {
            return;
        };
        map
    } else {
        let Some(table) = parse_field_table(data) else {
            return;
        };
        from_field_table(&table)
    };
    // Keys longer than 255 bytes cannot be AMQP keys: an error, not a panic.
    let Ok(table) = to_field_table(&json) else {
        return;
    };
    let once = from_field_table(&table);
    let twice = from_field_table(&to_field_table(&once).expect("a table's keys fit again"));
    assert_eq!(twice, once);
});
