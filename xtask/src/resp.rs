//! Just enough of the Redis protocol (RESP2) to ask a local redis-server or
//! sentinel a question with a deadline: `INFO replication`, `CLUSTER INFO`,
//! `SENTINEL ...`. No dependency, no `redis-cli` process per probe.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$5\r\nhello` (`None`: the null bulk string `$-1`)
    Bulk(Option<String>),
    /// `*2 ...` (`None`: the null array `*-1`)
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The text of a status or bulk reply.
    pub fn text(&self) -> Option<&str> {
        match self {
            Reply::Status(s) | Reply::Bulk(Some(s)) => Some(s),
            _ => None,
        }
    }

    /// The items of an array reply (none for anything else).
    pub fn items(&self) -> &[Reply] {
        match self {
            Reply::Array(Some(items)) => items,
            _ => &[],
        }
    }
}

/// The longest a probe may take: connect, send, read.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Send one command to 127.0.0.1:`port` and read its reply.
pub fn command(port: u16, args: &[&str]) -> Result<Reply, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
        .map_err(|e| format!("127.0.0.1:{port}: {e}"))?;
    let _ = stream.set_read_timeout(Some(PROBE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(PROBE_TIMEOUT));
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    (&stream)
        .write_all(request.as_bytes())
        .map_err(|e| format!("127.0.0.1:{port}: {e}"))?;
    read_reply(&mut BufReader::new(&stream)).map_err(|e| format!("127.0.0.1:{port}: {e}"))
}

/// Parse one reply from `input`.
pub fn read_reply(input: &mut impl BufRead) -> Result<Reply, String> {
    let mut line = String::new();
    input.read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line
        .strip_suffix("\r\n")
        .ok_or_else(|| format!("truncated reply {line:?}"))?;
    let (kind, rest) = line.split_at_checked(1).ok_or("empty reply line")?;
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| format!("bad length or integer {rest:?}"))
    };
    Ok(match kind {
        "+" => Reply::Status(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Integer(number()?),
        "$" => match usize::try_from(number()?) {
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                let mut data = vec![0; len + 2];
                input.read_exact(&mut data).map_err(|e| e.to_string())?;
                data.truncate(len);
                Reply::Bulk(Some(String::from_utf8_lossy(&data).into_owned()))
            }
        },
        "*" => match usize::try_from(number()?) {
            Err(_) => Reply::Array(None),
            Ok(len) => Reply::Array(Some(
                (0..len)
                    .map(|_| read_reply(input))
                    .collect::<Result<_, _>>()?,
            )),
        },
        other => return Err(format!("unknown reply type {other:?}")),
    })
}

/// The value of `key` in an `INFO`-style text (`key:value` lines).
pub fn info_field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Reply {
        read_reply(&mut text.as_bytes()).unwrap()
    }

    #[test]
    fn parses_every_reply_type() {
        assert_eq!(parse("+OK\r\n"), Reply::Status("OK".into()));
        assert_eq!(parse("-ERR no\r\n"), Reply::Error("ERR no".into()));
        assert_eq!(parse(":12\r\n"), Reply::Integer(12));
        assert_eq!(parse("$-1\r\n"), Reply::Bulk(None));
        assert_eq!(parse("*-1\r\n"), Reply::Array(None));
        let reply = parse("*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n");
        let items: Vec<_> = reply.items().iter().filter_map(Reply::text).collect();
        assert_eq!(items, ["127.0.0.1", "6380"]);
        let nested = parse("*1\r\n*2\r\n$4\r\nname\r\n$1\r\na\r\n");
        assert_eq!(nested.items()[0].items().len(), 2);
        // A bulk string may hold CRLF.
        assert_eq!(parse("$4\r\na\r\nb\r\n").text(), Some("a\r\nb"));
        assert!(read_reply(&mut "$5\r\nab".as_bytes()).is_err());
        assert!(read_reply(&mut "?x\r\n".as_bytes()).is_err());
    }

    #[test]
    fn reads_info_fields() {
        let info = "# Cluster\r\ncluster_state:ok\r\ncluster_slots_assigned:16384\r\n";
        assert_eq!(info_field(info, "cluster_state"), Some("ok"));
        assert_eq!(info_field(info, "cluster_slots_assigned"), Some("16384"));
        assert_eq!(info_field(info, "cluster_size"), None);
    }
}
