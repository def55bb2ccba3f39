//! The protocol reader against answers played from bytes (the fuzz
//! target's harness, `fuzz/fuzz_targets/beanstalk_reader.rs`), for the
//! inputs the fuzzer found.

use kombu_core::ErrorKind;
use tokio::io::{Join, Sink};

use super::Conn;

fn server(answers: &[u8]) -> Conn<Join<&[u8], Sink>> {
    Conn::over(tokio::io::join(answers, tokio::io::sink()))
}

/// Found by the fuzzer: `OK <66 GB>` to `stats` made the reader allocate
/// the announced length up front, and the process abort.
#[tokio::test]
async fn a_huge_announced_length_is_refused_not_allocated() {
    let mut conn = server(b"OK 666666666666\r\n\r\n");
    let err = conn.stats().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(conn.is_broken());
}

/// A length within the limit but past what the server sends: the
/// connection is lost, and nothing was allocated for the claim.
#[tokio::test]
async fn a_data_block_cut_short_is_a_lost_connection() {
    let mut conn = server(b"RESERVED 7 1000000000\r\nabc");
    let err = conn.reserve_with_timeout(0).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionLost, "{err}");
    assert!(conn.is_broken());
}

#[tokio::test]
async fn a_job_reads_with_its_crlf() {
    let mut conn = server(b"RESERVED 7 5\r\nhello\r\n");
    let job = match conn.reserve_with_timeout(0).await.unwrap() {
        super::Reserved::Job(job) => job,
        other => panic!("{other:?}"),
    };
    assert_eq!((job.id, job.body.as_slice()), (7, &b"hello"[..]));
    assert!(!conn.is_broken());
}
