//! The conformance suite on `memory://`.

use std::sync::Arc;

use kombu_core::{Connection, Registry};
use kombu_testkit::{GarbagePath, HookError};

fn connect() -> Option<Connection> {
    let mut registry = Registry::new();
    kombu_memory::register(&mut registry);
    let url = format!("memory://{}", kombu_testkit::unique("conformance"));
    Some(Connection::with_registry(&url, Arc::new(registry)).expect("memory URL"))
}

/// The garbage check's raw write: a value left in the queue by a writer
/// other than kombu.
async fn write_garbage(
    conn: &Connection,
    queue: &str,
    bytes: &[u8],
) -> Result<GarbagePath, HookError> {
    kombu_memory::put_foreign_value(conn.url(), queue, bytes);
    Ok(GarbagePath::Unreadable)
}

kombu_testkit::conformance_tests!(connect, garbage: write_garbage);
