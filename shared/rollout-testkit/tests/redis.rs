//! Real `redis-server` processes started by the test kit, checked over
//! RESP on plain `TcpStream`s.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use rollout_testkit::{pid_exists, RedisOptions, RedisReply, RedisServer};

/// A raw RESP connection.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(server: &RedisServer) -> Conn {
        let stream = TcpStream::connect(server.addr()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Conn {
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, args: &[&str]) {
        let mut frame = format!("*{}\r\n", args.len());
        for arg in args {
            frame.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.reader
            .get_mut()
            .write_all(frame.as_bytes())
            .expect("write");
    }

    /// Reads one reply and renders it as text: `+PONG`, `-NOAUTH ...`,
    /// `$value`, `$nil`, `:1`.
    fn reply(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "closed"));
        }
        let line = line.trim_end().to_owned();
        if let Some(len) = line.strip_prefix('$') {
            let Ok(len) = len.parse::<usize>() else {
                return Ok("$nil".into());
            };
            let mut buf = vec![0; len + 2];
            self.reader.read_exact(&mut buf)?;
            buf.truncate(len);
            return Ok(format!("${}", String::from_utf8_lossy(&buf)));
        }
        Ok(line)
    }

    fn call(&mut self, args: &[&str]) -> String {
        self.send(args);
        self.reply().expect("reply")
    }
}

#[test]
fn ping_pong() {
    let server = RedisServer::start().expect("start redis");
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert_ne!(server.port(), 6379, "must never use the shared server");
    let mut conn = Conn::open(&server);
    assert_eq!(conn.call(&["PING"]), "+PONG");
    assert_eq!(conn.call(&["SET", "k", "v"]), "+OK");
    assert_eq!(conn.call(&["GET", "k"]), "$v");
    assert_eq!(
        server.command(&["GET", "k"]).expect("helper"),
        RedisReply::Bulk(Some(b"v".to_vec()))
    );
    assert!(server.log_path().is_file());
}

#[test]
fn appendonly_data_survives_kill_and_restart() {
    let server =
        RedisServer::start_with(RedisOptions::default().appendonly(true)).expect("start redis");
    let port = server.port();
    let pid = server.pid().expect("pid");
    let mut conn = Conn::open(&server);
    assert_eq!(conn.call(&["SET", "rollout:1", "stage-2"]), "+OK");
    drop(conn);

    server.kill().expect("kill -9");
    assert!(!server.is_running());
    assert!(!pid_exists(pid), "pid {pid} still exists after kill");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port still accepts after kill"
    );

    server.restart().expect("restart");
    assert_eq!(server.port(), port);
    let mut conn = Conn::open(&server);
    assert_eq!(conn.call(&["GET", "rollout:1"]), "$stage-2");
}

#[test]
fn without_appendonly_a_restart_comes_back_empty() {
    let server = RedisServer::start().expect("start redis");
    assert_eq!(Conn::open(&server).call(&["SET", "k", "v"]), "+OK");
    server.stop().expect("stop");
    server.restart().expect("restart");
    assert_eq!(Conn::open(&server).call(&["GET", "k"]), "$nil");
}

#[test]
fn password_requires_auth() {
    let server =
        RedisServer::start_with(RedisOptions::default().password("p@ss word")).expect("start");
    assert_eq!(
        server.url(),
        format!("redis://:p%40ss%20word@127.0.0.1:{}", server.port())
    );
    let mut conn = Conn::open(&server);
    let reply = conn.call(&["GET", "k"]);
    assert!(reply.starts_with("-NOAUTH"), "got {reply}");
    let reply = conn.call(&["AUTH", "wrong"]);
    assert!(reply.starts_with("-"), "wrong password accepted: {reply}");
    assert_eq!(conn.call(&["AUTH", "p@ss word"]), "+OK");
    assert_eq!(conn.call(&["PING"]), "+PONG");
}

#[test]
fn acl_user_disables_the_default_user() {
    let options = RedisOptions::default().user("rollout").password("hunter2");
    let server = RedisServer::start_with(options).expect("start");
    assert_eq!(
        server.url(),
        format!("redis://rollout:hunter2@127.0.0.1:{}", server.port())
    );
    let mut conn = Conn::open(&server);
    let reply = conn.call(&["PING"]);
    assert!(reply.starts_with("-NOAUTH"), "got {reply}");
    let reply = conn.call(&["AUTH", "hunter2"]);
    assert!(reply.starts_with("-"), "default user accepted: {reply}");
    assert_eq!(conn.call(&["AUTH", "rollout", "hunter2"]), "+OK");
    assert_eq!(conn.call(&["SET", "k", "v"]), "+OK");
    assert_eq!(
        server
            .command(&["GET", "k"])
            .expect("helper")
            .as_text()
            .as_deref(),
        Some("v")
    );
}

#[test]
fn acl_user_without_password_is_rejected() {
    let err = RedisServer::start_with(RedisOptions::default().user("x")).expect_err("invalid");
    assert!(err.to_string().contains("password"), "{err}");
}

#[test]
fn pause_freezes_and_resume_thaws() {
    let server = RedisServer::start().expect("start");
    let mut conn = Conn::open(&server);
    assert_eq!(conn.call(&["PING"]), "+PONG");

    server.pause().expect("pause");
    assert!(server.is_paused() && server.is_running());
    conn.reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    conn.send(&["PING"]);
    match conn.reply() {
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "unexpected error {e}"
        ),
        Ok(reply) => panic!("paused server answered {reply:?}"),
    }

    server.resume().expect("resume");
    conn.reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(conn.reply().expect("PONG after resume"), "+PONG");
}

#[test]
fn drop_kills_the_process_and_removes_its_dir() {
    let server = RedisServer::start_with(RedisOptions::default().appendonly(true)).expect("start");
    let pid = server.pid().expect("pid");
    let dir = server.dir().to_path_buf();
    assert!(pid_exists(pid));
    drop(server);
    assert!(!pid_exists(pid), "pid {pid} survived drop");
    assert!(!dir.exists(), "temp dir {} survived drop", dir.display());
}

#[test]
fn many_parallel_servers_get_distinct_ports() {
    let servers: Vec<RedisServer> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(RedisServer::start)).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread").expect("start"))
            .collect()
    });
    let mut ports: Vec<u16> = servers.iter().map(RedisServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), servers.len());
    for server in &servers {
        assert_eq!(Conn::open(server).call(&["PING"]), "+PONG");
    }
}

#[test]
fn a_server_that_cannot_start_reports_its_log() {
    let options = RedisOptions::default().extra_config("no-such-directive yes");
    let err = RedisServer::start_with(options).expect_err("bad config must fail");
    let text = err.to_string();
    assert!(text.contains("did not become ready"), "{text}");
    assert!(text.contains("no-such-directive"), "{text}");
}
