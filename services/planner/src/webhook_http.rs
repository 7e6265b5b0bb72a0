//! The webhook sender's HTTP client: one HTTP/1.1 connection per POST (webhooks are few
//! and infrequent; nothing to pool), over TLS for `https://` addresses. TLS is tokio-rustls
//! with the ring provider given explicitly and the system's root certificates, read once;
//! no process-wide TLS default is installed, so nothing else in the process changes.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName};
use tokio_rustls::TlsConnector;

/// The TLS configuration of every `https://` webhook: the system's roots, ring.
static TLS: LazyLock<Result<Arc<rustls::ClientConfig>, String>> = LazyLock::new(|| {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for certificate in found.certs {
        // an unusable system certificate is skipped, like every TLS client does
        let _ = roots.add(certificate);
    }
    if roots.is_empty() {
        return Err("no system root certificates found (install ca-certificates)".to_owned());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|builder| Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
        .map_err(|error| format!("tls configuration: {error}"))
});

/// POSTs `body` to `url` with `headers`, all within `timeout`; the answer's status.
pub async fn post(
    url: &str,
    headers: &[(&'static str, String)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<StatusCode, String> {
    tokio::time::timeout(timeout, post_unbounded(url, headers, body))
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {}", humanize(timeout))))
}

fn humanize(duration: Duration) -> String {
    format!("{} ms", duration.as_millis())
}

async fn post_unbounded(
    url: &str,
    headers: &[(&'static str, String)],
    body: Vec<u8>,
) -> Result<StatusCode, String> {
    let uri: Uri = url
        .parse()
        .map_err(|error| format!("bad address {url:?}: {error}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{url:?} is not an http:// or https:// address")),
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("{url:?} names no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|authority| {
            authority
                .as_str()
                .rsplit('@')
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_else(|| host.clone());
    let path = uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_owned();
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|error| format!("connect to {host}:{port}: {error}"))?;
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(HOST, authority)
        .header(CONTENT_TYPE, "application/json")
        .header(
            USER_AGENT,
            concat!("rollout-notifier/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        let value =
            HeaderValue::from_str(value).map_err(|error| format!("header {name}: {error}"))?;
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|error| format!("header {name}: {error}"))?;
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|error| format!("request: {error}"))?;
    if https {
        let config = TLS.as_ref().map_err(Clone::clone)?;
        let name = ServerName::try_from(host.clone())
            .map_err(|error| format!("server name {host:?}: {error}"))?;
        let tls = TlsConnector::from(Arc::clone(config))
            .connect(name, tcp)
            .await
            .map_err(|error| format!("tls with {host}: {error}"))?;
        exchange(TokioIo::new(tls), request).await
    } else {
        exchange(TokioIo::new(tcp), request).await
    }
}

/// One request on a fresh connection.
async fn exchange<T>(io: T, request: Request<Full<Bytes>>) -> Result<StatusCode, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|error| format!("http handshake: {error}"))?;
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "webhook connection ended with an error");
        }
    });
    let answer = sender
        .send_request(request)
        .await
        .map(|response| response.status())
        .map_err(|error| format!("http: {error}"));
    drop(sender);
    driver.abort();
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_address_is_an_error_naming_it() {
        let error = post(
            "http://127.0.0.1:1/hooks",
            &[],
            b"{}".to_vec(),
            Duration::from_secs(2),
        )
        .await
        .expect_err("nothing listens on port 1");
        assert!(error.contains("127.0.0.1:1"), "{error}");
        let error = post(
            "ftp://example.com/x",
            &[],
            Vec::new(),
            Duration::from_secs(1),
        )
        .await
        .expect_err("not http");
        assert!(error.contains("not an http"), "{error}");
    }
}
