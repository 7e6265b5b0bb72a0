//! Every `SPEC §n` / `SPEC §n.m` the code, its docs and its scripts cite names a section
//! the contract in this crate has: a renumbered or dropped section fails here, naming the
//! file that still cites it.

use std::fs;
use std::path::{Path, PathBuf};

/// Where citations live, relative to the workspace root.
const ROOTS: &[&str] = &[
    "services",
    "shared",
    "loadtest",
    "tests",
    "deploy",
    "README.md",
];
/// Files worth reading.
const EXTENSIONS: &[&str] = &["rs", "md", "lua", "sh", "toml", "yaml", "yml"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the crate sits two levels below the workspace root")
        .to_path_buf()
}

fn files(path: &Path, found: &mut Vec<PathBuf>) {
    if path.is_file() {
        let readable = path
            .extension()
            .and_then(|extension| extension.to_str())
            .is_some_and(|extension| EXTENSIONS.contains(&extension));
        if readable {
            found.push(path.to_path_buf());
        }
        return;
    }
    let Ok(entries) = fs::read_dir(path) else {
        return;
    };
    for entry in entries.flatten() {
        let child = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // build output, vendored fuzz corpora and this crate's own copy of the contract
        if name.starts_with('.')
            || name.starts_with("target")
            || child.ends_with("rollout-spec/SPEC.md")
        {
            continue;
        }
        files(&child, found);
    }
}

/// The section numbers cited in `text`.
fn citations(text: &str) -> Vec<String> {
    text.match_indices("SPEC §")
        .map(|(at, marker)| {
            text[at + marker.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect::<String>()
                .trim_end_matches('.')
                .to_owned()
        })
        .filter(|number| !number.is_empty())
        .collect()
}

#[test]
fn every_cited_section_exists() {
    let root = workspace_root();
    let mut found = Vec::new();
    for name in ROOTS {
        files(&root.join(name), &mut found);
    }
    assert!(found.len() > 50, "the scan found the code: {}", found.len());
    let mut cited = 0;
    let mut dangling = Vec::new();
    for file in found {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        for number in citations(&text) {
            cited += 1;
            if rollout_spec::section(&number).is_none() {
                let shown = file
                    .strip_prefix(&root)
                    .unwrap_or(&file)
                    .display()
                    .to_string();
                dangling.push(format!("{shown}: SPEC §{number}"));
            }
        }
    }
    assert!(cited > 50, "the scan found the citations: {cited}");
    assert!(
        dangling.is_empty(),
        "citations of missing sections:\n{}",
        dangling.join("\n")
    );
}

#[test]
fn citations_are_read_to_the_end_of_their_number() {
    assert_eq!(
        citations("see SPEC §11.1, and SPEC §5. Also SPEC §x"),
        ["11.1", "5"]
    );
}
