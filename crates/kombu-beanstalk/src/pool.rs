//! Where connections come from: the server's address, and a small pool of
//! "control" connections for everything that does not block (put, peek,
//! delete of ready jobs, stats, kick).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kombu_core::Result;
use tokio::sync::{Mutex, MutexGuard};

use crate::protocol::Conn;

/// The address of the beanstalkd server.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) connect_timeout: Option<Duration>,
    /// The bound of each command's answer (the `socket_timeout` option).
    pub(crate) io_timeout: Option<Duration>,
}

impl Server {
    pub(crate) async fn connect(&self) -> Result<Conn> {
        let conn = Conn::connect(&self.host, self.port, self.connect_timeout).await?;
        Ok(conn.with_io_timeout(self.io_timeout))
    }
}

/// A connection slot: `None` until first used or after it broke.
pub(crate) type Slot = Option<Conn>;

/// A connection taken from a slot (connected on the way).
pub(crate) struct Taken<'a> {
    guard: MutexGuard<'a, Slot>,
}

impl Taken<'_> {
    /// The connection.
    pub(crate) fn conn(&mut self) -> &mut Conn {
        self.guard.as_mut().expect("a taken slot is connected")
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.guard.as_ref().is_some_and(Conn::is_broken) {
            *self.guard = None;
        }
    }
}

/// Connect the slot if it is empty (or broken).
pub(crate) async fn fill<'a>(
    server: &Server,
    mut guard: MutexGuard<'a, Slot>,
) -> Result<Taken<'a>> {
    if guard.as_ref().is_none_or(Conn::is_broken) {
        *guard = Some(server.connect().await?);
    }
    Ok(Taken { guard })
}

/// A few control connections, each used by one caller at a time.
pub(crate) struct Pool {
    server: Server,
    slots: Vec<Mutex<Slot>>,
    next: AtomicUsize,
}

impl Pool {
    pub(crate) fn new(server: Server, size: usize) -> Self {
        Pool {
            server,
            slots: (0..size.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub(crate) fn server(&self) -> &Server {
        &self.server
    }

    /// A free connection, or the next one in turn when all are busy.
    pub(crate) async fn get(&self) -> Result<Taken<'_>> {
        for slot in &self.slots {
            if let Ok(guard) = slot.try_lock() {
                return fill(&self.server, guard).await;
            }
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        fill(&self.server, self.slots[index].lock().await).await
    }

    /// Drop every connection.
    pub(crate) async fn close(&self) {
        for slot in &self.slots {
            *slot.lock().await = None;
        }
    }
}
