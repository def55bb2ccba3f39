//! Entry points for the fuzz targets in `fuzz/` (not part of the API: no
//! semver promise). They expose the field-table conversion kombu-amqp
//! applies to every header and argument table.

use lapin::types::FieldTable;
use serde_json::{Map, Value};

use kombu_core::Result;

/// A field table as the broker sends it (a 4-byte length, then the
/// entries), parsed by lapin's parser; `None` when it is not one.
pub fn parse_field_table(bytes: &[u8]) -> Option<FieldTable> {
    lapin::types::parsing::parse_field_table(bytes)
        .ok()
        .map(|(_, table)| table)
}

/// A field table as JSON, as kombu-amqp reads headers and arguments.
pub fn from_field_table(table: &FieldTable) -> Map<String, Value> {
    crate::field_table::from_field_table(table)
}

/// JSON as a field table, as kombu-amqp writes headers and arguments.
pub fn to_field_table(map: &Map<String, Value>) -> Result<FieldTable> {
    crate::field_table::to_field_table(map)
}
