//! Starting a NATS and a Redis server together, for tests that need both.

use std::thread;

use crate::error::{Result, TestkitError};
use crate::nats::{NatsOptions, NatsServer};
use crate::redis::{RedisOptions, RedisServer};

/// A private NATS (JetStream on) and Redis pair. Dropping it kills both.
#[derive(Debug)]
pub struct TestCluster {
    /// The NATS server.
    pub nats: NatsServer,
    /// The Redis server.
    pub redis: RedisServer,
}

impl TestCluster {
    /// Starts both servers with default options, concurrently.
    pub fn start() -> Result<TestCluster> {
        TestCluster::start_with(NatsOptions::default(), RedisOptions::default())
    }

    /// Starts both servers with the given options, concurrently.
    pub fn start_with(nats: NatsOptions, redis: RedisOptions) -> Result<TestCluster> {
        let (nats, redis) = thread::scope(|scope| {
            let redis = scope.spawn(move || RedisServer::start_with(redis));
            let nats = NatsServer::start_with(nats);
            let redis = redis.join().unwrap_or_else(|_| {
                Err(TestkitError::Protocol(
                    "the thread starting redis-server panicked".into(),
                ))
            });
            (nats, redis)
        });
        Ok(TestCluster {
            nats: nats?,
            redis: redis?,
        })
    }

    /// Splits the pair into its two servers.
    pub fn into_parts(self) -> (NatsServer, RedisServer) {
        (self.nats, self.redis)
    }
}
