//! `console-hash-password`: reads a password from standard input (one line) and prints its
//! argon2id hash for `console.users`:
//!
//! ```text
//! $ console-hash-password <<< 'correct horse battery staple'
//! $argon2id$v=19$m=19456,t=2,p=1$…
//! ```

use std::io::BufRead;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut line = String::new();
    if let Err(error) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("console-hash-password: cannot read standard input: {error}");
        return ExitCode::from(66);
    }
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        eprintln!("console-hash-password: give the password on standard input, e.g. console-hash-password <<< 'secret'");
        return ExitCode::from(64);
    }
    match rollout_console::auth::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("console-hash-password: {error}");
            ExitCode::from(70)
        }
    }
}
