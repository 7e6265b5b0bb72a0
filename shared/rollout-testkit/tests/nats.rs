//! Real `nats-server` processes started by the test kit, checked over the
//! NATS text protocol on plain `TcpStream`s.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use rollout_testkit::{pid_exists, NatsOptions, NatsServer, TestCluster};

/// A raw NATS client connection: INFO read, CONNECT sent.
struct Conn {
    reader: BufReader<TcpStream>,
    info: serde_json::Value,
}

impl Conn {
    fn open(server: &NatsServer) -> Conn {
        let stream = TcpStream::connect(server.addr()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).expect("read INFO");
        let json = line
            .trim_end()
            .strip_prefix("INFO ")
            .unwrap_or_else(|| panic!("expected INFO, got {line:?}"));
        let info = serde_json::from_str(json).expect("INFO json");
        let mut conn = Conn { reader, info };
        conn.send("CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"testkit-test\"}\r\n");
        conn
    }

    fn send(&mut self, text: &str) {
        self.reader
            .get_mut()
            .write_all(text.as_bytes())
            .expect("write");
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "closed"));
        }
        Ok(line.trim_end().to_owned())
    }

    /// PING and wait for the PONG.
    fn ping(&mut self) {
        self.send("PING\r\n");
        loop {
            let line = self.line().expect("reading PONG");
            if line == "PONG" {
                return;
            }
            assert!(!line.starts_with("-ERR"), "server error: {line}");
        }
    }

    /// Publishes `payload` to `subject` and returns the reply's payload.
    fn request(&mut self, subject: &str, payload: &str) -> serde_json::Value {
        self.send(&format!(
            "SUB _INBOX.t 1\r\nPUB {subject} _INBOX.t {}\r\n{payload}\r\n",
            payload.len()
        ));
        loop {
            let line = self.line().expect("reading reply");
            if line == "PING" {
                self.send("PONG\r\n");
                continue;
            }
            assert!(!line.starts_with("-ERR"), "server error: {line}");
            if let Some(rest) = line.strip_prefix("MSG ") {
                let len: usize = rest
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("MSG length");
                let mut buf = vec![0; len + 2];
                self.reader.read_exact(&mut buf).expect("MSG payload");
                self.send("UNSUB 1\r\n");
                buf.truncate(len);
                return serde_json::from_slice(&buf).expect("reply json");
            }
        }
    }
}

fn refuses_connections(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_err()
}

#[test]
fn starts_with_jetstream_and_answers_ping() {
    let server = NatsServer::start().expect("start nats");
    assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
    assert_ne!(server.port(), 4222, "must never use the shared server");
    let mut conn = Conn::open(&server);
    assert_eq!(conn.info["jetstream"], serde_json::Value::Bool(true));
    assert_eq!(
        conn.info["server_name"].as_str(),
        Some(server.server_name())
    );
    let version = conn.info["version"].as_str().expect("version");
    let minor: u64 = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .expect("minor");
    assert!(
        version.starts_with("2.") && minor >= 10,
        "old nats-server {version}"
    );
    conn.ping();
    let info = server.info().expect("info helper");
    assert_eq!(info["jetstream"], serde_json::Value::Bool(true));
    assert!(server.is_running());
    assert!(server.log_path().is_file());
}

#[test]
fn jetstream_can_be_turned_off() {
    let server = NatsServer::start_with(NatsOptions::default().jetstream(false)).expect("start");
    let conn = Conn::open(&server);
    assert_ne!(conn.info["jetstream"], serde_json::Value::Bool(true));
}

#[test]
fn parallel_servers_get_different_ports() {
    let (a, b) = thread::scope(|s| {
        let a = s.spawn(NatsServer::start);
        let b = s.spawn(NatsServer::start);
        (
            a.join().expect("thread a").expect("start a"),
            b.join().expect("thread b").expect("start b"),
        )
    });
    assert_ne!(a.port(), b.port());
    assert_ne!(a.pid(), b.pid());
    Conn::open(&a).ping();
    Conn::open(&b).ping();
}

#[test]
fn kill_then_restart_on_the_same_port_keeps_jetstream_data() {
    let server = NatsServer::start().expect("start");
    let port = server.port();
    let pid = server.pid().expect("pid");

    let mut conn = Conn::open(&server);
    let created = conn.request(
        "$JS.API.STREAM.CREATE.ORDERS",
        r#"{"name":"ORDERS","subjects":["orders.>"],"storage":"file"}"#,
    );
    assert!(created.get("error").is_none(), "create failed: {created}");
    let ack = conn.request("orders.1", "hello");
    assert_eq!(ack["stream"].as_str(), Some("ORDERS"), "pub ack: {ack}");
    drop(conn);

    server.kill().expect("kill");
    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    assert!(!pid_exists(pid), "pid {pid} still exists after kill");
    assert!(refuses_connections(port), "port still accepts after kill");

    server.restart().expect("restart");
    assert_eq!(server.port(), port);
    assert!(server.is_running());
    assert_ne!(server.pid(), Some(pid));
    let mut conn = Conn::open(&server);
    conn.ping();
    let info = conn.request("$JS.API.STREAM.INFO.ORDERS", "");
    assert_eq!(
        info["state"]["messages"].as_u64(),
        Some(1),
        "stream info after restart: {info}"
    );
}

#[test]
fn stop_then_restart() {
    let server = NatsServer::start().expect("start");
    server.stop().expect("stop");
    assert!(!server.is_running());
    assert!(refuses_connections(server.port()));
    server.stop().expect("stop twice is a no-op");
    server.kill().expect("kill after stop is a no-op");
    server.restart().expect("restart");
    Conn::open(&server).ping();
    // restart of a running server stops it first
    let before = server.pid();
    server.restart().expect("restart while running");
    assert_ne!(server.pid(), before);
    Conn::open(&server).ping();
}

#[test]
fn pause_freezes_and_resume_thaws() {
    let server = NatsServer::start().expect("start");
    let mut conn = Conn::open(&server);
    conn.ping();

    server.pause().expect("pause");
    assert!(server.is_paused());
    assert!(server.is_running(), "a paused server is still running");
    conn.reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    conn.send("PING\r\n");
    match conn.line() {
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "unexpected error {e}"
        ),
        Ok(line) => panic!("paused server answered {line:?}"),
    }

    server.resume().expect("resume");
    assert!(!server.is_paused());
    conn.reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let start = Instant::now();
    loop {
        let line = conn.line().expect("PONG after resume");
        if line == "PONG" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}

#[test]
fn drop_kills_a_paused_server_and_removes_its_dir() {
    let server = NatsServer::start().expect("start");
    let pid = server.pid().expect("pid");
    let dir = server.dir().to_path_buf();
    let port = server.port();
    assert!(pid_exists(pid));
    server.pause().expect("pause");
    drop(server);
    assert!(!pid_exists(pid), "pid {pid} survived drop");
    assert!(!dir.exists(), "temp dir {} survived drop", dir.display());
    assert!(refuses_connections(port));
}

#[test]
fn extra_config_file_is_applied() {
    let options = NatsOptions::default()
        .config("authorization {\n  user: alice\n  password: s3cret\n}\nmax_payload: 65536\n");
    let server = NatsServer::start_with(options).expect("start");
    let config = server.config_path().expect("config written");
    assert!(config.is_file());
    let mut conn = Conn::open(&server);
    assert_eq!(conn.info["auth_required"], serde_json::Value::Bool(true));
    assert_eq!(conn.info["max_payload"].as_u64(), Some(65536));
    assert_eq!(conn.info["jetstream"], serde_json::Value::Bool(true));
    // Unauthenticated CONNECT (sent by Conn::open) is rejected.
    conn.send("PING\r\n");
    let line = conn.line().expect("reply");
    assert!(
        line.starts_with("-ERR"),
        "expected an auth error, got {line}"
    );
}

#[test]
fn cluster_starts_both() {
    let cluster = TestCluster::start().expect("cluster");
    Conn::open(&cluster.nats).ping();
    assert!(cluster.redis.url().starts_with("redis://127.0.0.1:"));
    let (nats, redis) = cluster.into_parts();
    assert!(nats.is_running() && redis.is_running());
}

#[test]
fn a_server_that_cannot_start_reports_its_log() {
    let options = NatsOptions::default()
        .config("this is { not valid nats config\n")
        .startup_timeout(Duration::from_secs(20));
    let err = NatsServer::start_with(options).expect_err("bad config must fail");
    let text = err.to_string();
    assert!(text.contains("did not become ready"), "{text}");
    assert!(text.contains("process exited"), "{text}");
    assert!(text.contains("nats-server.log"), "{text}");
    // the tail carries nats-server's own complaint about the config
    assert!(text.contains("rollout-testkit: starting"), "{text}");
    assert!(text.lines().count() > 3, "{text}");
}
