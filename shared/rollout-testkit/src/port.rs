//! Free loopback ports.
//!
//! A port is picked by binding `127.0.0.1:0` and dropping the listener, so
//! another process may grab it before the server binds it; the server
//! wrappers detect "address already in use" and retry with a new port.

use std::net::{Ipv4Addr, TcpListener};

use crate::error::{Result, TestkitError};

/// How many ports a server start tries before giving up.
pub const PORT_ATTEMPTS: usize = 5;

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().expect("free port");
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("port was free");
    }
}
