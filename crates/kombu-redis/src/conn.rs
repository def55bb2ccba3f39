//! [`RedisConn`]: the command connection, to one server (`redis://`,
//! `sentinel://`) or to a Redis Cluster (`rediscluster://`), behind one
//! [`ConnectionLike`] so every command of the backend is written once.
//!
//! A cluster runs a pipeline on one node only, so a pipeline whose keys
//! fall in several hash slots is split here into one pipeline per slot
//! (sent concurrently, answers put back in order). A `MULTI` pipeline
//! split that way is atomic per slot only: the backend keeps what must be
//! atomic (a queue's lists and its unacked bookkeeping) in one slot, and
//! what spans slots (binding tables, declarations) needs no atomicity.

use futures::future::{join_all, BoxFuture, FutureExt};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// The command connection of a Redis backend.
#[derive(Clone)]
pub(crate) enum RedisConn {
    /// One server, reconnecting by itself.
    Single(ConnectionManager),
    /// A Redis Cluster: commands routed by their key's slot, MOVED/ASK and
    /// failovers followed by the client.
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// PING one server: on a cluster, any one master (a PING to every node
    /// would fail while a dead node is still in the slot map).
    pub async fn ping(&mut self) -> redis::RedisResult<()> {
        match self {
            RedisConn::Single(conn) => redis::cmd("PING").exec_async(conn).await,
            RedisConn::Cluster(conn) => conn
                .route_command(
                    redis::cmd("PING"),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
                )
                .await
                .map(drop),
        }
    }
}

/// The slot of a command's first key (every command kombu-rs pipelines
/// has its key first), or `None` for a command without one.
fn slot_of(cmd: &Cmd) -> Option<Slot> {
    let key = cmd.args_iter().nth(1)?;
    let redis::Arg::Simple(key) = key else {
        return None;
    };
    Some(Slot::for_key(key))
}

/// The commands of `pipeline` grouped by slot, in first-seen order:
/// (sub-pipeline, indexes of its commands in `pipeline`).
fn split_by_slot(pipeline: &Pipeline) -> Vec<(Pipeline, Vec<usize>)> {
    let mut groups: Vec<(Option<Slot>, Pipeline, Vec<usize>)> = Vec::new();
    for (index, cmd) in pipeline.cmd_iter().enumerate() {
        let slot = slot_of(cmd);
        let group = groups
            .iter_mut()
            .find(|(s, _, _)| *s == slot || slot.is_none() || s.is_none());
        match group {
            Some((s, pipe, indexes)) => {
                if s.is_none() {
                    *s = slot;
                }
                pipe.add_command(cmd.clone());
                indexes.push(index);
            }
            None => {
                let mut pipe = redis::pipe();
                if pipeline.is_transaction() {
                    pipe.atomic();
                }
                pipe.add_command(cmd.clone());
                groups.push((slot, pipe, vec![index]));
            }
        }
    }
    groups
        .into_iter()
        .map(|(_, pipe, indexes)| (pipe, indexes))
        .collect()
}

/// Run `pipeline` on a cluster, one pipeline per slot, and answer as one
/// pipeline would (`offset`/`count` as `Pipeline::query_async` asks).
async fn cluster_pipeline(
    conn: &mut ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> redis::RedisResult<Vec<Value>> {
    let groups = split_by_slot(pipeline);
    if groups.len() <= 1 {
        return conn.req_packed_commands(pipeline, offset, count).await;
    }
    let atomic = pipeline.is_transaction();
    let answers = join_all(groups.iter().map(|(pipe, indexes)| {
        let mut conn = conn.clone();
        async move {
            let values = if atomic {
                let mut exec = conn.req_packed_commands(pipe, indexes.len() + 1, 1).await?;
                match exec.pop() {
                    Some(Value::Array(items)) => items,
                    other => {
                        return Err(redis::RedisError::from((
                            redis::ErrorKind::UnexpectedReturnType,
                            "a MULTI/EXEC of a split pipeline was aborted",
                            format!("{other:?}"),
                        )))
                    }
                }
            } else {
                conn.req_packed_commands(pipe, 0, indexes.len()).await?
            };
            Ok::<_, redis::RedisError>(values)
        }
    }))
    .await;
    let mut values = vec![Value::Nil; pipeline.len()];
    for ((_, indexes), answer) in groups.iter().zip(answers) {
        for (index, value) in indexes.iter().zip(answer?) {
            values[*index] = value;
        }
    }
    Ok(if atomic {
        vec![Value::Array(values)]
    } else {
        values
    })
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_command(cmd),
            RedisConn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(conn) => {
                let run: BoxFuture<'a, _> = cluster_pipeline(conn, pipeline, offset, count).boxed();
                run
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(conn) => conn.get_db(),
            RedisConn::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_hash_tags() {
        let foo = Slot::for_key(b"foo");
        assert_eq!(Slot::for_key(b"{foo}bar"), foo);
        assert_eq!(Slot::for_key(b"unacked{foo}"), foo);
        assert_ne!(Slot::for_key(b"bar"), foo);
    }

    #[test]
    fn a_pipeline_splits_by_slot_keeping_order() {
        let mut pipe = redis::pipe();
        pipe.cmd("LPUSH").arg("foo").arg("1");
        pipe.cmd("LPUSH").arg("bar").arg("2");
        pipe.cmd("LPUSH").arg("{foo}x").arg("3");
        let groups = split_by_slot(&pipe);
        let indexes: Vec<Vec<usize>> = groups.iter().map(|(_, i)| i.clone()).collect();
        assert_eq!(indexes, [vec![0, 2], vec![1]]);
    }
}
