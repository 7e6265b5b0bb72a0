//! Many script calls in one round trip. Each call stays its own atomic script (all or
//! nothing, with its own preconditions); the pipeline only saves the round trips between
//! them. A call's failure is its own: the others' answers come back beside it.
//!
//! Scripts run by `EVALSHA`; when Redis does not know a script yet (a fresh or restarted
//! server), it refuses the calls with `NOSCRIPT` before running them, so those calls are
//! sent again, once, after `SCRIPT LOAD`.

use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisError, RedisResult, Script, ScriptInvocation, ServerErrorKind, Value};

use crate::StoreError;

/// Runs `calls` in one pipeline, in order; `scripts` are every script they use (loaded when
/// Redis answers `NOSCRIPT`). One answer per call; `Err` only when the round trip itself
/// failed (then nothing is known of any call).
pub(crate) async fn invoke_all<C: ConnectionLike>(
    connection: &mut C,
    calls: &[ScriptInvocation<'_>],
    scripts: &[&Script],
) -> Result<Vec<RedisResult<Value>>, StoreError> {
    let mut answers: Vec<Option<RedisResult<Value>>> = (0..calls.len()).map(|_| None).collect();
    let mut pending: Vec<usize> = (0..calls.len()).collect();
    let mut loaded = false;
    while !pending.is_empty() {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for &index in &pending {
            pipe.invoke_script(&calls[index]);
        }
        let replies: Vec<RedisResult<Value>> = pipe.query_async(connection).await?;
        if replies.len() != pending.len() {
            return Err(StoreError::Protocol(format!(
                "{} answers to a pipeline of {} script calls",
                replies.len(),
                pending.len()
            )));
        }
        let mut unknown = Vec::new();
        for (index, reply) in pending.iter().zip(replies) {
            match reply {
                Err(error) if !loaded && is_noscript(&error) => unknown.push(*index),
                other => answers[*index] = Some(other),
            }
        }
        if unknown.is_empty() {
            break;
        }
        for script in scripts {
            script.load_async(connection).await?;
        }
        loaded = true;
        pending = unknown;
    }
    Ok(answers
        .into_iter()
        .map(|answer| answer.unwrap_or_else(|| Err(unanswered())))
        .collect())
}

fn is_noscript(error: &RedisError) -> bool {
    error.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

fn unanswered() -> RedisError {
    RedisError::from((ErrorKind::Client, "script call left without an answer"))
}
