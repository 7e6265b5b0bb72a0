//! Free loopback ports, outside the kernel's ephemeral range.
//!
//! A port is picked by binding it and dropping the listener, so another process may grab
//! it before the server binds it; the server wrappers detect "address already in use" and
//! retry with a new port.
//!
//! The ports come from below the ephemeral range (`net.ipv4.ip_local_port_range`), not
//! from binding port 0: that range is also where every outgoing connection takes its
//! source port, so a server stopped and started again on its port — a killed cluster node,
//! whose peers know its route port — could find it held by a connection some other test
//! opened meanwhile (`bind: address already in use`, seen in CI).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, TcpListener};

use crate::error::{Result, TestkitError};

/// How many ports a server start tries before giving up.
pub const PORT_ATTEMPTS: usize = 5;

/// The lowest port handed out.
const LOWEST_PORT: u16 = 10_000;
/// Random ports tried below the ephemeral range before falling back to port 0.
const PICKS: usize = 64;

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let below = ephemeral_range_start();
    if below > LOWEST_PORT + 1_000 {
        for _ in 0..PICKS {
            let port = LOWEST_PORT + random_below(below - LOWEST_PORT);
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(TestkitError::io("binding 127.0.0.1:0 to find a free port"))?;
    let port = listener
        .local_addr()
        .map_err(TestkitError::io(
            "reading the port of a 127.0.0.1:0 listener",
        ))?
        .port();
    Ok(port)
}

/// The first port of the kernel's ephemeral range (Linux's default when unreadable).
fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A random number below `bound` (> 0), from the standard library's per-process random
/// keys and a counter: no dependency for a test helper.
fn random_below(bound: u16) -> u16 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
    );
    u16::try_from(hasher.finish() % u64::from(bound)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().expect("free port");
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("port was free");
    }

    #[test]
    fn free_ports_are_below_the_ephemeral_range() {
        let below = ephemeral_range_start();
        if below <= LOWEST_PORT + 1_000 {
            println!("skipped: the ephemeral range starts at {below}");
            return;
        }
        for _ in 0..32 {
            let port = free_port().expect("free port");
            assert!(
                (LOWEST_PORT..below).contains(&port),
                "port {port} outside {LOWEST_PORT}..{below}"
            );
        }
    }
}
