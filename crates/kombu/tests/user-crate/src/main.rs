//! A user's crate (outside the workspace): one `Connection` type for a
//! plain connection and a pooled one.

use kombu::prelude::*;

fn describe(conn: &kombu::Connection) -> String {
    format!("{} at {}", conn.transport_name(), conn.as_uri())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> kombu::Result<()> {
    kombu::install_default_transports();
    let conn = Connection::new("memory://user-crate")?;
    let pool = ConnectionPool::new("memory://user-crate", ConnectionOptions::new(), 2)?;
    let pooled = pool.acquire().await?;
    println!("{}", describe(&conn));
    println!("{}", describe(&pooled));
    assert_eq!(describe(&conn), describe(&pooled));
    Ok(())
}
