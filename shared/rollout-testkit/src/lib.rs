//! Private `nats-server` and `redis-server` processes for tests.
//!
//! Every test starts its own servers on free loopback ports, with their
//! data, config and logs in a temporary directory, so tests are
//! independent, can run in parallel, and can crash, restart, freeze and
//! thaw servers for fault tests. The machine's own servers on 4222/6379
//! are never used.
//!
//! ```
//! use rollout_testkit::{NatsServer, RedisOptions, RedisServer};
//!
//! # fn main() -> Result<(), rollout_testkit::TestkitError> {
//! let nats = NatsServer::start()?; // JetStream on
//! let redis = RedisServer::start_with(RedisOptions::default().appendonly(true))?;
//! assert!(nats.url().starts_with("nats://127.0.0.1:"));
//!
//! redis.command(&["SET", "k", "v"])?;
//! redis.kill()?; // SIGKILL, like a crash
//! redis.restart()?; // same port, same dir: the AOF is reloaded
//! assert_eq!(redis.command(&["GET", "k"])?.as_text().as_deref(), Some("v"));
//!
//! nats.pause()?; // SIGSTOP
//! nats.resume()?; // SIGCONT
//! # Ok(())
//! # }
//! ```
//!
//! Binaries are found through `ROLLOUT_NATS_SERVER_BIN` /
//! `ROLLOUT_REDIS_SERVER_BIN`, then `<workspace>/.tools/bin`, then `PATH`
//! (see [`find_binary`]); `deploy/tools/install.sh` puts a recent enough
//! `nats-server` (>= 2.10) into `.tools/bin`.
//!
//! [`netns`] makes several hosts on one machine (network namespaces on a bridge, root
//! only) for the multi-host tests and `loadtest scale --hosts`.

mod binary;
mod cluster;
mod cluster_support;
mod error;
mod nats;
mod nats_cluster;
pub mod netns;
mod port;
mod process;
mod redis;
mod redis_cluster;
mod resp;

pub use binary::{
    binary_version, env_var_for, find_binary, tools_bin_dir, workspace_root,
    MIN_NATS_SERVER_VERSION,
};
pub use cluster::TestCluster;
pub use error::{Result, TestkitError};
pub use nats::{NatsOptions, NatsServer};
pub use nats_cluster::{NatsCluster, DEFAULT_NATS_CLUSTER_SIZE};
pub use port::{free_port, PORT_ATTEMPTS};
pub use process::pid_exists;
pub use redis::{RedisOptions, RedisServer};
pub use redis_cluster::{
    RedisCluster, RedisClusterOptions, DEFAULT_REDIS_NODE_TIMEOUT, MIN_REDIS_CLUSTER_MASTERS,
    REDIS_CLUSTER_SLOTS,
};
pub use resp::RedisReply;

pub mod timeouts {
    //! Default readiness deadlines (generous: they only bound failures).
    pub use crate::nats::DEFAULT_STARTUP_TIMEOUT as NATS_STARTUP_TIMEOUT;
    pub use crate::redis::DEFAULT_STARTUP_TIMEOUT as REDIS_STARTUP_TIMEOUT;
}
