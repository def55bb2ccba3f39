//! The beanstalkd protocol reader: the input plays the server. Its first
//! four bytes pick four commands (put, reserve, peek, stats, pipelined
//! puts, ...), the rest is everything the "server" answers. Never a panic,
//! never an allocation the answer did not pay for: a job body is at most
//! as long as the input.
#![no_main]

use std::sync::OnceLock;

use kombu_beanstalk::protocol::{Conn, PeekState, PutJob, Reserved};
use libfuzzer_sys::fuzz_target;
use tokio::io::{Join, Sink};

type Server<'a> = Join<&'a [u8], Sink>;

const COMMANDS: u8 = 22;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (script, answers) = data.split_at(4);
    let mut conn = Conn::over(tokio::io::join(answers, tokio::io::sink()));
    // The input never blocks: no timer needed (the runtime has none).
    conn.set_io_timeout(None);
    runtime().block_on(async {
        for &command in script {
            if conn.is_broken() {
                break;
            }
            run(&mut conn, command % COMMANDS, answers.len()).await;
        }
    });
});

async fn run(conn: &mut Conn<Server<'_>>, command: u8, input: usize) {
    let body_fits = |len: usize| assert!(len <= input, "a {len}-byte job from {input} bytes");
    match command {
        0 => drop(conn.put(0, 0, 60, b"hello").await),
        1 => drop(conn.put_in("celery", 1, 2, 3, b"x").await),
        2 => drop(conn.watch("celery").await),
        3 => drop(conn.ignore("default").await),
        4 => {
            if let Ok(Reserved::Job(job)) = conn.reserve_with_timeout(0).await {
                body_fits(job.body.len());
            }
        }
        5 => {
            if let Ok(Some(job)) = conn.reserve_job(1).await {
                body_fits(job.body.len());
            }
        }
        6 => drop(conn.delete(1).await),
        7 => drop(conn.release(1, 0, 0).await),
        8 => drop(conn.bury(1, 0).await),
        9 => drop(conn.touch(1).await),
        10 => drop(conn.kick(10).await),
        11 => drop(conn.kick_job(1).await),
        12 => {
            if let Ok(Some(job)) = conn.peek(1).await {
                body_fits(job.body.len());
            }
        }
        13 => {
            if let Ok(Some(job)) = conn.peek_state(PeekState::Ready).await {
                body_fits(job.body.len());
            }
        }
        14 => drop(
            conn.stats_job(1)
                .await
                .map(|s| s.map(|s| s.number("reserves"))),
        ),
        15 => drop(conn.stats_tube("celery").await),
        16 => drop(conn.stats().await.map(|s| s.number("current-jobs-ready"))),
        17 => drop(conn.list_tube_used().await),
        18 => drop(conn.list_tubes().await),
        19 => {
            let job = PutJob {
                pri: 0,
                delay: 0,
                ttr: 60,
                body: b"{}",
            };
            drop(conn.put_pipelined(&[job, job]).await);
        }
        20 => drop(conn.delete_pipelined(&[1, 2, 3]).await),
        _ => drop(conn.set_watched(&["a".into(), "b".into()]).await),
    }
}
