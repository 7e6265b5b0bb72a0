//! Pieces shared by the NATS and Redis cluster helpers: distinct free
//! ports for the extra listeners a cluster node needs, polling a cluster
//! condition against a deadline, and the error naming the node that held
//! the condition up.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Result, TestkitError};

/// Starts one server per item of `options` with `start`, each on a thread of its own, side
/// by side; the results in order. A thread that panicked gives a protocol error naming the
/// `server` it was starting.
pub(crate) fn start_side_by_side<O: Send, T: Send>(
    options: Vec<O>,
    start: fn(O) -> Result<T>,
    server: &str,
) -> Vec<Result<T>> {
    thread::scope(|scope| {
        let handles: Vec<_> = options
            .into_iter()
            .map(|options| scope.spawn(move || start(options)))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle.join().unwrap_or_else(|_| {
                    Err(TestkitError::Protocol(format!(
                        "the thread starting a {server} panicked"
                    )))
                })
            })
            .collect()
    })
}

/// How many bytes of a node's log a cluster error shows.
const LOG_TAIL_BYTES: u64 = 4096;

/// `count` distinct TCP ports on 127.0.0.1 that were free a moment ago.
///
/// All listeners are held until every port is known, so the same port is
/// never handed out twice within one call.
pub(crate) fn distinct_free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .map_err(TestkitError::io("binding 127.0.0.1:0 to find a free port"))
        })
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .map(|addr| addr.port())
                .map_err(TestkitError::io(
                    "reading the port of a 127.0.0.1:0 listener",
                ))
        })
        .collect()
}

/// Why a cluster condition does not hold yet: which node (index into the
/// cluster's nodes) showed it, and what it showed.
#[derive(Debug)]
pub(crate) struct Waiting {
    /// The node whose answer (or silence) holds the condition up.
    pub(crate) node: usize,
    /// What is missing, in words.
    pub(crate) reason: String,
    /// The condition can no longer come true (a node it needs exited):
    /// waiting longer is pointless.
    pub(crate) hopeless: bool,
}

impl Waiting {
    /// The condition is held up by `node` because of `reason`.
    pub(crate) fn on(node: usize, reason: impl Into<String>) -> Waiting {
        Waiting {
            node,
            reason: reason.into(),
            hopeless: false,
        }
    }

    /// The condition will never hold, because of `node`: `reason`.
    pub(crate) fn hopeless(node: usize, reason: impl Into<String>) -> Waiting {
        Waiting {
            hopeless: true,
            ..Waiting::on(node, reason)
        }
    }
}

/// Runs `check` until it succeeds, reports a hopeless [`Waiting`], or
/// `timeout` passes (backing off from 5 ms to 100 ms between tries); on
/// failure returns the last [`Waiting`].
pub(crate) fn poll_until<T>(
    timeout: Duration,
    mut check: impl FnMut() -> std::result::Result<T, Waiting>,
) -> std::result::Result<T, Waiting> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(5);
    loop {
        let waiting = match check() {
            Ok(value) => return Ok(value),
            Err(waiting) => waiting,
        };
        if waiting.hopeless || Instant::now() >= deadline {
            return Err(waiting);
        }
        thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// The [`TestkitError::NotReady`] for a cluster condition that `node`
/// (listening on `port`, logging to `log`) still held up at the deadline.
pub(crate) fn not_ready(
    server: &'static str,
    port: u16,
    log: &Path,
    reason: String,
) -> TestkitError {
    TestkitError::NotReady {
        server,
        port,
        reason,
        log: log.to_path_buf(),
        log_tail: log_tail(log),
    }
}

/// The last few KiB of a log file (a restarted server's log holds every
/// run, so this shows the latest one).
pub(crate) fn log_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) if text.trim().is_empty() => "(log is empty)".to_owned(),
        Ok(text) => text,
        Err(e) => format!("(log unreadable: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let mut ports = distinct_free_ports(8).expect("ports");
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 8);
    }

    #[test]
    fn polling_returns_the_last_reason_at_the_deadline() {
        let mut tries = 0;
        let waiting = poll_until(Duration::from_millis(30), || {
            tries += 1;
            Err::<(), _>(Waiting::on(2, format!("try {tries}")))
        })
        .expect_err("never holds");
        assert_eq!(waiting.node, 2);
        assert_eq!(waiting.reason, format!("try {tries}"));
        assert!(tries > 1);
    }

    #[test]
    fn polling_gives_up_on_a_hopeless_condition() {
        let mut tries = 0;
        let waiting = poll_until(Duration::from_secs(30), || {
            tries += 1;
            Err::<(), _>(Waiting::hopeless(1, "exited"))
        })
        .expect_err("hopeless");
        assert_eq!((tries, waiting.node), (1, 1));
    }

    #[test]
    fn polling_stops_once_the_condition_holds() {
        let mut tries = 0;
        let value = poll_until(Duration::from_secs(5), || {
            tries += 1;
            if tries < 3 {
                Err(Waiting::on(0, "not yet"))
            } else {
                Ok(tries)
            }
        })
        .expect("holds on the third try");
        assert_eq!(value, 3);
    }
}
