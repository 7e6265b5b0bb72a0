//! A TCP proxy between one process and a server, to cut that process off:
//!
//! - [`Link::Open`]: bytes flow both ways.
//! - [`Link::Blackhole`]: nothing flows and nothing is dropped, like a partition the network
//!   heals later: what was sent waits (in the proxy's sockets) and arrives when the link
//!   opens again — possibly long after the sender gave up on it, which is exactly how a
//!   partitioned leader's stale writes reach Redis.
//! - [`Link::Severed`]: every connection is closed at once and new ones are closed as soon
//!   as they are accepted, like a firewall sending resets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The state of the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Open,
    Blackhole,
    Severed,
}

/// A proxy listening on a free loopback port and forwarding to `upstream`. Dropping it
/// stops it and closes every connection.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    link: watch::Sender<Link>,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding 127.0.0.1:<free port> to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let (link, _) = watch::channel(Link::Open);
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            upstream,
            link.subscribe(),
            Arc::clone(&accepted),
        ));
        Proxy {
            addr,
            upstream,
            link,
            accepted,
            task,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }

    pub fn link(&self) -> Link {
        *self.link.borrow()
    }

    /// Connections accepted so far (reconnection attempts count).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.link.send_replace(Link::Severed);
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    link: watch::Receiver<Link>,
    accepted: Arc<AtomicU64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        if *link.borrow() == Link::Severed {
            drop(client);
            continue;
        }
        tokio::spawn(connection(client, upstream, link.clone()));
    }
}

async fn connection(client: TcpStream, upstream: SocketAddr, mut link: watch::Receiver<Link>) {
    // a connection made while blackholed hangs until the link opens (or is severed)
    if !wait_open(&mut link).await {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let upward = tokio::spawn(pump(client_read, server_write, link.clone()));
    let downward = tokio::spawn(pump(server_read, client_write, link));
    let _ = tokio::join!(upward, downward);
}

/// Waits while the link is blackholed; `false` once it is severed.
async fn wait_open(link: &mut watch::Receiver<Link>) -> bool {
    loop {
        let state = *link.borrow_and_update();
        match state {
            Link::Open => return true,
            Link::Severed => return false,
            Link::Blackhole => {
                if link.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}

/// Copies `from` to `to` while the link is open; holds everything while it is
/// blackholed; drops both halves when it is severed or either side closes.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut link: watch::Receiver<Link>) {
    let mut buffer = vec![0_u8; 64 * 1024];
    loop {
        if !wait_open(&mut link).await {
            return;
        }
        tokio::select! {
            changed = link.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            read = from.read(&mut buffer) => {
                let count = match read {
                    Ok(0) | Err(_) => return,
                    Ok(count) => count,
                };
                if to.write_all(&buffer[..count]).await.is_err() {
                    return;
                }
            }
        }
    }
}
