//! Binary lookup: the env var override, the version floor for
//! nats-server, and the error for a missing binary. One test only, since
//! it changes the process environment.

use std::os::unix::fs::PermissionsExt;

use rollout_testkit::{
    binary_version, env_var_for, find_binary, TestkitError, MIN_NATS_SERVER_VERSION,
};

#[test]
fn finds_binaries_and_rejects_old_nats_servers() {
    let var = env_var_for("nats-server");
    assert_eq!(var, "ROLLOUT_NATS_SERVER_BIN");
    let saved = std::env::var_os(&var);

    // The normal lookup finds a nats-server that is new enough.
    std::env::remove_var(&var);
    let nats = find_binary("nats-server").expect("nats-server (run deploy/tools/install.sh)");
    let (major, minor, _) = binary_version(&nats).expect("version");
    assert!((major, minor) >= MIN_NATS_SERVER_VERSION, "{nats:?}");
    find_binary("redis-server").expect("redis-server");

    // An explicit override that is too old is refused, pointing at install.sh.
    let dir = tempfile::tempdir().expect("tempdir");
    let old = dir.path().join("nats-server");
    std::fs::write(&old, "#!/bin/sh\necho 'nats-server: v2.9.10'\n").expect("write");
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::env::set_var(&var, &old);
    let err = find_binary("nats-server").expect_err("2.9 must be refused");
    assert!(
        matches!(err, TestkitError::BinaryTooOld { .. }),
        "unexpected {err:?}"
    );
    assert!(err.to_string().contains("deploy/tools/install.sh"), "{err}");

    // An override pointing nowhere is an error, not a silent fallback.
    std::env::set_var(&var, dir.path().join("missing"));
    let err = find_binary("nats-server").expect_err("missing override");
    assert!(
        matches!(err, TestkitError::BinaryNotFound { .. }),
        "{err:?}"
    );

    match saved {
        Some(value) => std::env::set_var(&var, value),
        None => std::env::remove_var(&var),
    }

    let err = find_binary("rollout-testkit-no-such-binary").expect_err("missing");
    assert!(err.to_string().contains("install.sh"), "{err}");
}
