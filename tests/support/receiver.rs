//! A real HTTP receiver for webhook notifications: it records every request (headers and
//! body) and answers 503 while told to fail, so tests watch deliveries, retries and their
//! idempotency keys from the receiving end.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    /// What it was answered.
    pub status: StatusCode,
}

impl Received {
    /// A header's value as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }
}

#[derive(Debug, Default)]
struct Inner {
    received: Mutex<Vec<Received>>,
    failing: AtomicBool,
}

/// The receiver, serving on a loopback port until dropped with the runtime.
#[derive(Clone, Debug)]
pub struct Receiver {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
}

impl Receiver {
    /// Starts serving `POST /hooks`.
    pub async fn start() -> Receiver {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/hooks", post(receive))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { inner, addr }
    }

    /// Where to point a webhook.
    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// Answer 503 (`true`) or 204 from now on.
    pub fn fail(&self, failing: bool) {
        self.inner.failing.store(failing, Ordering::SeqCst);
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.inner
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

async fn receive(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = if inner.failing.load(Ordering::SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    };
    inner
        .received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Received {
            headers,
            body,
            status,
        });
    status
}
