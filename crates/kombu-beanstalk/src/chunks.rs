//! Bodies larger than the server's `max-job-size` (64 KiB by default): the
//! bytes go into delayed jobs of a side tube that no one reserves, and the
//! queue's job holds a small manifest listing them; readers `peek` them back
//! by id. Acking the message deletes its chunks.

use kombu_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

use crate::protocol::Conn;

/// The tube that holds chunks.
pub(crate) const CHUNK_TUBE: &str = "_kombu.chunks";

/// Chunks are delayed for this long (about 136 years): never ready, never
/// reserved, only peeked and deleted by id.
const CHUNK_DELAY: u32 = u32::MAX;

const MANIFEST_PREFIX: &[u8] = br#"{"kombu-beanstalk-chunks":"#;

#[derive(Serialize, Deserialize)]
struct Manifest {
    #[serde(rename = "kombu-beanstalk-chunks")]
    chunks: Vec<u64>,
    bytes: usize,
}

/// The chunk ids a stored body refers to (empty for a plain body).
pub(crate) fn chunk_ids(stored: &[u8]) -> Vec<u64> {
    if !stored.starts_with(MANIFEST_PREFIX) {
        return Vec::new();
    }
    serde_json::from_slice::<Manifest>(stored)
        .map(|m| m.chunks)
        .unwrap_or_default()
}

/// True when `body` is stored in chunks: larger than `max` bytes, or
/// looking like a manifest itself.
pub(crate) fn needs_chunks(body: &[u8], max: usize) -> bool {
    body.len() > max || body.starts_with(MANIFEST_PREFIX)
}

/// What to store for `body`: the body itself when it fits in `max`
/// bytes, else a manifest of chunks written through `conn` now.
pub(crate) async fn store(conn: &mut Conn, body: &[u8], max: usize) -> Result<Vec<u8>> {
    if !needs_chunks(body, max) {
        return Ok(body.to_vec());
    }
    let mut chunks = Vec::new();
    for piece in body.chunks(max.max(1024)) {
        match conn.put_in(CHUNK_TUBE, 0, CHUNK_DELAY, 3600, piece).await {
            Ok(id) => chunks.push(id),
            Err(err) => {
                for id in chunks {
                    let _ = conn.delete(id).await;
                }
                return Err(err);
            }
        }
    }
    let manifest = Manifest {
        chunks,
        bytes: body.len(),
    };
    Ok(serde_json::to_vec(&manifest).expect("a manifest serializes"))
}

/// The body a stored job stands for (its chunks read back when it is a manifest).
pub(crate) async fn load(conn: &mut Conn, stored: Vec<u8>) -> Result<Vec<u8>> {
    if !stored.starts_with(MANIFEST_PREFIX) {
        return Ok(stored);
    }
    let Ok(manifest) = serde_json::from_slice::<Manifest>(&stored) else {
        return Ok(stored);
    };
    let mut body = Vec::with_capacity(manifest.bytes);
    for id in manifest.chunks {
        let job = conn.peek(id).await?.ok_or_else(|| {
            Error::new(
                ErrorKind::Protocol,
                format!("chunk {id} of a large beanstalk message is missing"),
            )
        })?;
        body.extend_from_slice(&job.body);
    }
    Ok(body)
}

/// Delete the chunks of a stored body (best effort).
pub(crate) async fn discard(conn: &mut Conn, stored: &[u8]) {
    for id in chunk_ids(stored) {
        let _ = conn.delete(id).await;
    }
}
