//! A minimal RESP2 client: enough to authenticate, `PING`, read `INFO`
//! and run simple commands against a test Redis over a plain
//! `TcpStream`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use crate::error::{Result, TestkitError};

/// Largest bulk string or array accepted (guards against garbage input).
const MAX_LEN: usize = 64 << 20;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisReply {
    /// `+OK`, `+PONG`, ...
    Simple(String),
    /// `-ERR ...`, `-NOAUTH ...`, ...
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$n` bulk string; `None` for the nil bulk `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*n` array; `None` for the nil array `*-1`.
    Array(Option<Vec<RedisReply>>),
}

impl RedisReply {
    /// The reply as text, for simple strings, errors and bulk strings.
    pub fn as_text(&self) -> Option<String> {
        match self {
            RedisReply::Simple(s) | RedisReply::Error(s) => Some(s.clone()),
            RedisReply::Bulk(Some(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        }
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, RedisReply::Error(_))
    }
}

/// A connection speaking RESP2.
#[derive(Debug)]
pub(crate) struct RespConn {
    reader: BufReader<TcpStream>,
}

impl RespConn {
    /// Wraps a connected stream (timeouts are the caller's business).
    pub(crate) fn new(stream: TcpStream) -> Self {
        RespConn {
            reader: BufReader::new(stream),
        }
    }

    /// Sends `args` as a RESP array and reads one reply.
    pub(crate) fn command(&mut self, args: &[&str]) -> Result<RedisReply> {
        let frame = encode_command(args);
        self.reader
            .get_mut()
            .write_all(&frame)
            .map_err(TestkitError::io("sending a redis command"))?;
        read_reply(&mut self.reader, 0)
    }
}

/// Encodes `args` as a RESP array of bulk strings.
pub(crate) fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn protocol(msg: impl Into<String>) -> TestkitError {
    TestkitError::Protocol(msg.into())
}

fn read_line(reader: &mut impl BufRead) -> Result<String> {
    let mut line = String::new();
    let n = reader
        .read_line(&mut line)
        .map_err(TestkitError::io("reading a redis reply"))?;
    if n == 0 {
        return Err(protocol("redis closed the connection"));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn parse_len(text: &str) -> Result<Option<usize>> {
    let n: i64 = text
        .parse()
        .map_err(|_| protocol(format!("bad length {text:?}")))?;
    if n < 0 {
        return Ok(None);
    }
    let n = usize::try_from(n).map_err(|_| protocol(format!("bad length {n}")))?;
    if n > MAX_LEN {
        return Err(protocol(format!("length {n} too large")));
    }
    Ok(Some(n))
}

/// Reads one reply (arrays recursively, at most 32 levels deep).
pub(crate) fn read_reply(reader: &mut impl BufRead, depth: usize) -> Result<RedisReply> {
    if depth > 32 {
        return Err(protocol("reply nested too deeply"));
    }
    let line = read_line(reader)?;
    let mut chars = line.chars();
    let kind = chars.next().ok_or_else(|| protocol("empty reply line"))?;
    let rest = chars.as_str();
    match kind {
        '+' => Ok(RedisReply::Simple(rest.to_owned())),
        '-' => Ok(RedisReply::Error(rest.to_owned())),
        ':' => rest
            .parse()
            .map(RedisReply::Integer)
            .map_err(|_| protocol(format!("bad integer {rest:?}"))),
        '$' => match parse_len(rest)? {
            None => Ok(RedisReply::Bulk(None)),
            Some(n) => {
                let mut buf = vec![0; n + 2];
                reader
                    .read_exact(&mut buf)
                    .map_err(TestkitError::io("reading a redis bulk string"))?;
                buf.truncate(n);
                Ok(RedisReply::Bulk(Some(buf)))
            }
        },
        '*' => match parse_len(rest)? {
            None => Ok(RedisReply::Array(None)),
            Some(n) => (0..n)
                .map(|_| read_reply(reader, depth + 1))
                .collect::<Result<Vec<_>>>()
                .map(|items| RedisReply::Array(Some(items))),
        },
        other => Err(protocol(format!(
            "unexpected reply type {other:?} in {line:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands() {
        assert_eq!(
            encode_command(&["SET", "k", "a b"]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\na b\r\n".to_vec()
        );
    }

    #[test]
    fn parses_replies() {
        let mut input: &[u8] =
            b"+PONG\r\n-NOAUTH x\r\n:7\r\n$3\r\nabc\r\n$-1\r\n*2\r\n+a\r\n:1\r\n";
        assert_eq!(
            read_reply(&mut input, 0).expect("simple"),
            RedisReply::Simple("PONG".into())
        );
        assert_eq!(
            read_reply(&mut input, 0).expect("error"),
            RedisReply::Error("NOAUTH x".into())
        );
        assert_eq!(
            read_reply(&mut input, 0).expect("int"),
            RedisReply::Integer(7)
        );
        assert_eq!(
            read_reply(&mut input, 0).expect("bulk"),
            RedisReply::Bulk(Some(b"abc".to_vec()))
        );
        assert_eq!(
            read_reply(&mut input, 0).expect("nil"),
            RedisReply::Bulk(None)
        );
        assert_eq!(
            read_reply(&mut input, 0).expect("array"),
            RedisReply::Array(Some(vec![
                RedisReply::Simple("a".into()),
                RedisReply::Integer(1)
            ]))
        );
    }
}
