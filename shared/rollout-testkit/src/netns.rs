//! Several hosts on one machine (SPEC §14): a Linux bridge in the root namespace and one
//! network namespace per host, joined to the bridge by a veth pair. Processes run inside a
//! host with `ip netns exec`; a host is cut off by taking its veth end in the root namespace
//! down (every packet to and from the host is lost, connections stay open and resume when
//! the link comes back up, as after a real partition), and healed by bringing it up again.
//!
//! Hosts reach each other across the bridge: a rule in iptables' FORWARD chain lets packets
//! between the bridge's ports through (where Docker runs, the chain drops what it does not
//! accept), removed on drop.
//!
//! Needs root and iproute2; [`Hosts::create`] says why and returns `None` otherwise, so a
//! test can skip. Everything is removed on drop, after a panic too: the hosts' processes are
//! killed, the namespaces, veth pairs and bridge deleted.

use std::collections::HashMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{NatsOptions, RedisOptions};

/// Runs `ip` with `args`; the error names the command and what it printed.
fn ip(args: &[&str]) -> Result<String, String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("{program} {}: {error}", args.join(" ")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {} {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// One host: a network namespace with its end of a veth pair.
#[derive(Debug)]
pub struct Host {
    pub index: usize,
    /// The network namespace's name.
    pub netns: String,
    /// The veth end on the bridge (root namespace): the link a cut takes down.
    pub link: String,
    /// The host's address on the bridge's network.
    pub addr: Ipv4Addr,
}

impl Host {
    /// Starts `binary` inside the host with exactly the `ROLLOUT_*` settings in `env`
    /// (others from the test's shell are removed), its output appended to `log`.
    pub fn spawn(&self, binary: &Path, env: &HashMap<String, String>, log: &Path) -> HostProcess {
        self.spawn_with_args(binary, &[], env, log)
    }

    /// [`Host::spawn`] with command-line arguments (a server's options).
    pub fn spawn_with_args(
        &self,
        binary: &Path,
        args: &[String],
        env: &HashMap<String, String>,
        log: &Path,
    ) -> HostProcess {
        let launch = Launch {
            netns: self.netns.clone(),
            binary: binary.to_owned(),
            args: args.to_vec(),
            env: env.clone(),
            log: log.to_owned(),
        };
        HostProcess {
            child: Some(launch.start()),
            launch,
        }
    }

    /// Cuts the host off: its link to the bridge goes down (packets both ways are lost).
    pub fn cut(&self) {
        ip(&["link", "set", &self.link, "down"]).expect("link down");
    }

    /// Brings the host's link up again.
    pub fn heal(&self) {
        ip(&["link", "set", &self.link, "up"]).expect("link up");
    }
}

/// How a host process was started, to start it again the same way.
#[derive(Debug, Clone)]
struct Launch {
    netns: String,
    binary: PathBuf,
    args: Vec<String>,
    env: HashMap<String, String>,
    log: PathBuf,
}

impl Launch {
    fn start(&self) -> Child {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let err: File = out.try_clone().expect("log file");
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.netns])
            .arg(&self.binary)
            .args(&self.args);
        for (name, _) in std::env::vars() {
            if name.starts_with("ROLLOUT_") {
                command.env_remove(name);
            }
        }
        // `ip netns exec` execs the binary: the child's pid is the service's
        command
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "{} starts in {}: {error}",
                    self.binary.display(),
                    self.netns
                )
            })
    }
}

/// A process running inside a host; killed when dropped.
#[derive(Debug)]
pub struct HostProcess {
    child: Option<Child>,
    launch: Launch,
}

impl HostProcess {
    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.launch.log
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.launch.log).unwrap_or_default()
    }

    /// Lines of its log containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// SIGTERM, as an orchestrator stops a service, and waits up to `grace` for it to exit;
    /// then SIGKILL. Returns how it ended: `Ok` with its exit status when it exited on its
    /// own, `Err` saying it had to be killed (or was not running).
    pub fn terminate(&mut self, grace: Duration) -> Result<std::process::ExitStatus, String> {
        let Some(mut child) = self.child.take() else {
            return Err("not running".to_owned());
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let until = std::time::Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if std::time::Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("still running {grace:?} after SIGTERM: killed"));
                }
            }
        }
    }

    /// Starts it again exactly as it was started (after [`HostProcess::terminate`] or
    /// [`HostProcess::kill`]); its log goes on in the same file.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(self.launch.start());
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The bridge and the hosts on it.
#[derive(Debug)]
pub struct Hosts {
    pub bridge: String,
    /// The bridge's address: the root namespace as the hosts see it (servers there listen
    /// on it).
    pub bridge_addr: Ipv4Addr,
    hosts: Vec<Host>,
}

impl Hosts {
    /// Options for a NATS and a Redis in the root namespace that the hosts reach through
    /// the bridge: NATS listens on every address, Redis on loopback and the bridge's
    /// address (protected mode off, since the hosts' connections are not loopback).
    pub fn server_options(&self) -> (NatsOptions, RedisOptions) {
        (
            NatsOptions::default().arg("-a").arg("0.0.0.0"),
            RedisOptions::default().extra_config(format!(
                "bind 127.0.0.1 {}\nprotected-mode no\n",
                self.bridge_addr
            )),
        )
    }

    /// Creates the bridge and `count` hosts, or says why it cannot (not root, no `ip`, no
    /// free network) and returns `None`.
    pub fn create(count: usize) -> Option<Hosts> {
        if run("id", &["-u"]).map(|uid| uid.trim() == "0") != Ok(true) {
            println!("skipped: network namespaces need root");
            return None;
        }
        if let Err(error) = ip(&["-V"]) {
            println!("skipped: iproute2 is missing ({error})");
            return None;
        }
        let pid = std::process::id();
        let used = ip(&["-4", "-o", "addr"]).unwrap_or_default();
        let routes = ip(&["-4", "route"]).unwrap_or_default();
        let Some(subnet) = (0..200u32)
            .map(|offset| u8::try_from(20 + (pid + offset) % 200).expect("below 220"))
            .find(|subnet| {
                let prefix = format!("10.{subnet}.");
                !used.contains(&prefix) && !routes.contains(&prefix)
            })
        else {
            println!("skipped: no free 10.x.0.0/24 network for the hosts");
            return None;
        };
        let mut hosts = Hosts {
            bridge: format!("rb{}", pid % 10_000),
            bridge_addr: Ipv4Addr::new(10, subnet, 0, 1),
            hosts: Vec::new(),
        };
        if let Err(error) = hosts.build(pid, subnet, count) {
            println!("skipped: cannot build the hosts: {error}");
            return None;
        }
        Some(hosts)
    }

    fn build(&mut self, pid: u32, subnet: u8, count: usize) -> Result<(), String> {
        let bridge = self.bridge.clone();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.bridge_addr),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        // hosts talk to each other across the bridge (a NATS cluster's routes): where
        // Docker runs, the FORWARD chain's policy is DROP and bridged packets pass through it
        if let Err(error) = run("iptables", &forward_rule("-I", &bridge)) {
            println!("hosts may not reach each other: {error}");
        }
        for index in 0..count {
            let host = Host {
                index,
                netns: format!("h{pid}-{index}"),
                link: format!("vr{}-{index}", pid % 100_000),
                addr: Ipv4Addr::new(10, subnet, 0, u8::try_from(index + 2).expect("few hosts")),
            };
            let inner = format!("vh{}-{index}", pid % 100_000);
            ip(&["netns", "add", &host.netns])?;
            // pushed at once: drop removes what was made so far
            let (netns, link) = (host.netns.clone(), host.link.clone());
            self.hosts.push(host);
            let addr = format!("{}/24", self.hosts[index].addr);
            ip(&["link", "add", &link, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &inner, "netns", &netns])?;
            ip(&["link", "set", &link, "master", &bridge, "up"])?;
            ip(&["-n", &netns, "addr", "add", &addr, "dev", &inner])?;
            ip(&["-n", &netns, "link", "set", &inner, "up"])?;
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &netns,
                "route",
                "add",
                "default",
                "via",
                &self.bridge_addr.to_string(),
            ])?;
        }
        Ok(())
    }

    pub fn host(&self, index: usize) -> &Host {
        &self.hosts[index]
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Waits until `addr:port` in the root namespace accepts a TCP connection from inside
    /// host `index` (the servers listen on the bridge's address).
    pub fn wait_reachable(
        &self,
        index: usize,
        port: u16,
        deadline: Duration,
    ) -> Result<(), String> {
        let until = std::time::Instant::now() + deadline;
        let script = format!("exec 3<>/dev/tcp/{}/{port}", self.bridge_addr);
        loop {
            let attempt = run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.hosts[index].netns,
                    "timeout",
                    "2",
                    "bash",
                    "-c",
                    &script,
                ],
            );
            match attempt {
                Ok(_) => return Ok(()),
                Err(error) if std::time::Instant::now() > until => return Err(error),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in &self.hosts {
            // whatever still runs inside (a process a test leaked)
            for pid in ip(&["netns", "pids", &host.netns])
                .unwrap_or_default()
                .split_whitespace()
            {
                if let Ok(pid) = pid.parse::<i32>() {
                    let pid = nix::unistd::Pid::from_raw(pid);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
            // deleting one end of a veth pair deletes both
            let _ = ip(&["link", "del", &host.link]);
            let _ = ip(&["netns", "del", &host.netns]);
        }
        let _ = run("iptables", &forward_rule("-D", &self.bridge));
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// The iptables arguments inserting (`-I`) or deleting (`-D`) the rule that forwards
/// packets between the ports of `bridge`.
fn forward_rule<'a>(action: &'a str, bridge: &'a str) -> [&'a str; 8] {
    [
        action, "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT",
    ]
}
