//! Many script calls in one round trip. Each call stays its own atomic script (all or
//! nothing, with its own preconditions); the pipeline only saves the round trips between
//! them. A call's failure is its own: the others' answers come back beside it.
//!
//! A call is an `EVALSHA` command built in place ([`script_call`]): its keys and arguments
//! are written straight into the command's buffer, with no per-argument allocation (the
//! hot path of every commit). When Redis does not know a script yet (a fresh or restarted
//! server), it refuses the calls with `NOSCRIPT` before running them, so those calls are
//! sent again, once, after `SCRIPT LOAD`.

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, RedisError, RedisResult, Script, ServerErrorKind, Value};

use crate::StoreError;

/// The start of a call of `script` with `keys` keys: add the keys, then the arguments.
pub(crate) fn script_call(script: &Script, keys: usize) -> Cmd {
    script_call_sized(script, keys, keys, 0)
}

/// [`script_call`] for about `args` keys and arguments of `bytes` bytes in all, its
/// buffers sized once.
pub(crate) fn script_call_sized(script: &Script, keys: usize, args: usize, bytes: usize) -> Cmd {
    let mut call = Cmd::with_capacity(args + 3, bytes + 64);
    call.arg("EVALSHA").arg(script.get_hash()).arg(keys);
    call
}

/// Runs `calls` (from [`script_call`]) in one pipeline, in order; `scripts` are every
/// script they use (loaded when Redis answers `NOSCRIPT`). One answer per call; `Err` only
/// when the round trip itself failed (then nothing is known of any call).
pub(crate) async fn invoke_all<C: ConnectionLike>(
    connection: &mut C,
    calls: Vec<Cmd>,
    scripts: &[&Script],
) -> Result<Vec<RedisResult<Value>>, StoreError> {
    let mut answers: Vec<Option<RedisResult<Value>>> = (0..calls.len()).map(|_| None).collect();
    // the original index of each call in the pipeline being sent, in its order
    let mut pending: Vec<usize> = (0..calls.len()).collect();
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for call in calls {
        pipe.add_command(call);
    }
    let mut loaded = false;
    while !pending.is_empty() {
        let replies: Vec<RedisResult<Value>> = pipe.query_async(connection).await?;
        if replies.len() != pending.len() {
            return Err(StoreError::Protocol(format!(
                "{} answers to a pipeline of {} script calls",
                replies.len(),
                pending.len()
            )));
        }
        let mut unknown = Vec::new();
        for (position, reply) in replies.into_iter().enumerate() {
            match reply {
                Err(error) if !loaded && is_noscript(&error) => unknown.push(position),
                other => answers[pending[position]] = Some(other),
            }
        }
        if unknown.is_empty() {
            break;
        }
        for script in scripts {
            script.load_async(connection).await?;
        }
        loaded = true;
        let mut again = redis::pipe();
        again.ignore_errors();
        let sent: Vec<&Cmd> = pipe.cmd_iter().collect();
        for &position in &unknown {
            again.add_command(sent[position].clone());
        }
        pending = unknown.iter().map(|&position| pending[position]).collect();
        pipe = again;
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
