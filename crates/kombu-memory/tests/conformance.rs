//! The conformance suite on `memory://`.

use std::sync::Arc;

use kombu_core::{Connection, Registry};

fn connect() -> Option<Connection> {
    let mut registry = Registry::new();
    kombu_memory::register(&mut registry);
    let url = format!("memory://{}", kombu_testkit::unique("conformance"));
    Some(Connection::with_registry(&url, Arc::new(registry)).expect("memory URL"))
}

kombu_testkit::conformance_tests!(connect);
