//! The async client against a real beanstalkd (KOMBU_TEST_BEANSTALK_URL).

use std::time::Duration;

use kombu_beanstalk::protocol::{check_tube_name, Conn, PeekState, PutJob, Reserved};

async fn conn() -> Option<Conn> {
    let url = kombu_testkit::test_url("beanstalk")?;
    let url = kombu_core::BrokerUrl::parse(&url).expect("beanstalk URL");
    let host = url.hostname().unwrap_or("127.0.0.1").to_owned();
    let port = url.port().unwrap_or(11300);
    Some(
        Conn::connect(&host, port, Some(Duration::from_secs(5)))
            .await
            .expect("connect"),
    )
}

fn tube(prefix: &str) -> String {
    kombu_testkit::unique(prefix)
}

#[tokio::test]
async fn put_reserve_delete_and_stats() {
    let Some(mut c) = conn().await else { return };
    let t = tube("proto-put");
    c.use_tube(&t).await.unwrap();
    let id = c.put(100, 0, 30, b"hello\r\nworld").await.unwrap();
    c.set_watched(std::slice::from_ref(&t)).await.unwrap();
    assert_eq!(c.watched(), std::slice::from_ref(&t));
    let stats = c.stats_tube(&t).await.unwrap().unwrap();
    assert_eq!(stats.number("current-jobs-ready"), 1);
    let Reserved::Job(job) = c.reserve_with_timeout(0).await.unwrap() else {
        panic!("no job")
    };
    assert_eq!(job.id, id);
    assert_eq!(job.body, b"hello\r\nworld");
    let js = c.stats_job(id).await.unwrap().unwrap();
    assert_eq!(js.text("tube"), Some(t.as_str()));
    assert_eq!(js.text("state"), Some("reserved"));
    assert_eq!(js.number("pri"), 100);
    assert_eq!(js.number("reserves"), 1);
    assert!(c.touch(id).await.unwrap());
    assert!(c.delete(id).await.unwrap());
    assert!(!c.delete(id).await.unwrap(), "second delete finds nothing");
    assert_eq!(c.reserve_with_timeout(0).await.unwrap(), Reserved::TimedOut);
    assert!(c.stats_job(id).await.unwrap().is_none());
}

#[tokio::test]
async fn release_bury_kick_and_peek() {
    let Some(mut c) = conn().await else { return };
    let t = tube("proto-bury");
    c.use_tube(&t).await.unwrap();
    c.set_watched(std::slice::from_ref(&t)).await.unwrap();
    let id = c.put(10, 0, 30, b"job").await.unwrap();
    let Reserved::Job(job) = c.reserve_with_timeout(1).await.unwrap() else {
        panic!("no job")
    };
    assert!(c.release(job.id, 5, 0).await.unwrap());
    assert_eq!(c.stats_job(id).await.unwrap().unwrap().number("pri"), 5);
    let Reserved::Job(job) = c.reserve_with_timeout(1).await.unwrap() else {
        panic!("no job")
    };
    assert_eq!(
        c.stats_job(id).await.unwrap().unwrap().number("reserves"),
        2
    );
    assert!(c.bury(job.id, 7).await.unwrap());
    assert_eq!(c.peek_state(PeekState::Ready).await.unwrap(), None);
    let buried = c.peek_state(PeekState::Buried).await.unwrap().unwrap();
    assert_eq!(buried.id, id);
    assert_eq!(c.kick(10).await.unwrap(), 1);
    assert_eq!(
        c.peek_state(PeekState::Ready).await.unwrap().unwrap().id,
        id
    );
    // Delayed jobs, kick-job and peek by id.
    let delayed = c.put(0, 3600, 30, b"later").await.unwrap();
    assert_eq!(
        c.peek_state(PeekState::Delayed).await.unwrap().unwrap().id,
        delayed
    );
    assert!(c.kick_job(delayed).await.unwrap());
    assert_eq!(c.peek(delayed).await.unwrap().unwrap().body, b"later");
    assert!(c.list_tubes().await.unwrap().contains(&t));
    assert!(c.delete(id).await.unwrap());
    assert!(c.delete(delayed).await.unwrap());
    assert!(!c.kick_job(delayed).await.unwrap());
}

/// A reserved job belongs to the connection that reserved it.
#[tokio::test]
async fn reservations_belong_to_their_connection() {
    let (Some(mut a), Some(mut b)) = (conn().await, conn().await) else {
        return;
    };
    let t = tube("proto-owner");
    a.use_tube(&t).await.unwrap();
    a.set_watched(std::slice::from_ref(&t)).await.unwrap();
    let id = a.put(0, 0, 30, b"mine").await.unwrap();
    let Reserved::Job(_) = a.reserve_with_timeout(1).await.unwrap() else {
        panic!("no job")
    };
    assert!(
        !b.delete(id).await.unwrap(),
        "another connection deleted a reserved job"
    );
    assert!(!b.release(id, 0, 0).await.unwrap());
    assert!(!b.touch(id).await.unwrap());
    assert!(b.reserve_job(id).await.unwrap().is_none());
    drop(a); // closing the connection releases its jobs at once
    let mut found = None;
    for _ in 0..50 {
        if let Some(job) = b.reserve_job(id).await.unwrap() {
            found = Some(job);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(found.expect("job came back").body, b"mine");
    assert!(b.delete(id).await.unwrap());
}

#[tokio::test]
async fn reserve_times_out_and_ignore_keeps_one_tube() {
    let Some(mut c) = conn().await else { return };
    let t = tube("proto-empty");
    c.set_watched(std::slice::from_ref(&t)).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(c.reserve_with_timeout(1).await.unwrap(), Reserved::TimedOut);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let err = c.ignore(&t).await.unwrap_err();
    assert_eq!(err.kind(), kombu_core::ErrorKind::PreconditionFailed);
    assert!(c.stats().await.unwrap().number("max-job-size") > 0);
}

#[tokio::test]
async fn job_too_big_is_rejected_and_connection_survives() {
    let Some(mut c) = conn().await else { return };
    let max = c.stats().await.unwrap().number("max-job-size") as usize;
    let t = tube("proto-big");
    c.use_tube(&t).await.unwrap();
    let err = c.put(0, 0, 30, &vec![b'x'; max + 1]).await.unwrap_err();
    assert_eq!(err.kind(), kombu_core::ErrorKind::Rejected);
    let id = c.put(0, 0, 30, b"small").await.unwrap();
    assert!(c.delete(id).await.unwrap());
}

/// Pipelined puts answer each job in order: a job too big is refused
/// alone, the ones around it are stored, in order, and the connection
/// stays usable; pipelined deletes say which jobs were there.
#[tokio::test]
async fn pipelined_puts_and_deletes_answer_each_job_in_order() {
    let Some(mut c) = conn().await else { return };
    let max = c.stats().await.unwrap().number("max-job-size") as usize;
    let t = tube("proto-pipe");
    c.use_tube(&t).await.unwrap();
    let too_big = vec![b'x'; max + 1];
    let bodies: Vec<Vec<u8>> = (0..300)
        .map(|n| format!("job {n}\r\n").into_bytes())
        .collect();
    let mut jobs: Vec<PutJob<'_>> = bodies
        .iter()
        .map(|body| PutJob {
            pri: 10,
            delay: 0,
            ttr: 30,
            body,
        })
        .collect();
    jobs.insert(
        2,
        PutJob {
            pri: 10,
            delay: 0,
            ttr: 30,
            body: &too_big,
        },
    );
    let answers = c.put_pipelined(&jobs).await.unwrap();
    assert_eq!(answers.len(), 301);
    assert_eq!(
        answers[2].as_ref().unwrap_err().kind(),
        kombu_core::ErrorKind::Rejected
    );
    assert!(!c.is_broken());
    let ids: Vec<u64> = answers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, answer)| *answer.as_ref().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in order");
    c.set_watched(std::slice::from_ref(&t)).await.unwrap();
    for (n, id) in ids.iter().enumerate().take(3) {
        let Reserved::Job(job) = c.reserve_with_timeout(0).await.unwrap() else {
            panic!("no job")
        };
        assert_eq!(
            (job.id, job.body),
            (*id, format!("job {n}\r\n").into_bytes())
        );
    }
    let stats = c.stats_tube(&t).await.unwrap().unwrap();
    assert_eq!(stats.number("current-jobs-ready"), 297);
    let mut doomed = ids.clone();
    doomed.push(u64::MAX);
    let deleted = c.delete_pipelined(&doomed).await.unwrap();
    assert_eq!(deleted.len(), 301);
    assert!(deleted[..300].iter().all(|d| *d), "every job was there");
    assert!(!deleted[300], "no such job");
    let stats = c.stats_tube(&t).await.unwrap().unwrap();
    assert_eq!(stats.number("current-jobs-ready"), 0);
    assert_eq!(stats.number("current-jobs-reserved"), 0);
    assert!(c.put_pipelined(&[]).await.unwrap().is_empty());
}

/// A pipelined exchange stopped midway (its future dropped, as an outer
/// timeout does) leaves the connection broken: its answers are never read
/// as the answers of later commands.
#[tokio::test]
async fn a_pipeline_dropped_midway_breaks_the_connection() {
    let Some(mut c) = conn().await else { return };
    let t = tube("proto-cancel");
    c.use_tube(&t).await.unwrap();
    let body = vec![b'x'; 1000];
    let jobs: Vec<PutJob<'_>> = (0..200)
        .map(|_| PutJob {
            pri: 0,
            delay: 0,
            ttr: 30,
            body: &body,
        })
        .collect();
    // Polled once (the write goes out), then dropped at the deadline.
    let outcome = tokio::time::timeout(Duration::ZERO, c.put_pipelined(&jobs)).await;
    assert!(outcome.is_err(), "the exchange was cut short");
    assert!(c.is_broken(), "out of step: broken");
    let err = c.list_tube_used().await.unwrap_err();
    assert_eq!(err.kind(), kombu_core::ErrorKind::ConnectionLost);
    // Clean up with a new connection: whatever was stored.
    let Some(mut c) = conn().await else { return };
    c.use_tube(&t).await.unwrap();
    while let Some(job) = c.peek_state(PeekState::Ready).await.unwrap() {
        c.delete(job.id).await.unwrap();
    }
}

#[test]
fn tube_names() {
    for ok in ["a", "celery", "x.y-z_1+(2);$/", &"a".repeat(200)] {
        assert!(check_tube_name(ok).is_ok(), "{ok}");
    }
    for bad in ["", "-x", "a b", "é", "a:b", "a*b", &"a".repeat(201)] {
        let err = check_tube_name(bad).unwrap_err();
        assert_eq!(err.kind(), kombu_core::ErrorKind::Unsupported, "{bad}");
    }
}
