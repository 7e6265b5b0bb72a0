//! The product contract, `SPEC.md` beside this file: what the code and its comments cite
//! as `SPEC §n` or `SPEC §n.m`. It lives in the repository so a change of behaviour and the
//! change of the contract land together; `tests/citations.rs` fails when the code cites a
//! section the contract does not have.
//!
//! Kept current by hand: the contract comes from the guide's `../shared/SPEC.md`; a
//! decision the code makes where the contract is silent is written into this copy (and
//! the README's design decisions) in the same change.

/// The whole contract, as Markdown.
pub const SPEC: &str = include_str!("../SPEC.md");

/// The text of section `number` (`"5"`, `"11.1"`): from its heading to the next heading of
/// the same or a higher level, or `None` when the contract has no such section.
pub fn section(number: &str) -> Option<&'static str> {
    let mut start = None;
    let mut level = 0;
    let mut offset = 0;
    for line in SPEC.split_inclusive('\n') {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if hashes > 0 {
            let title = line[hashes..].trim_start();
            match start {
                None if heading_number(title) == Some(number) => {
                    start = Some(offset);
                    level = hashes;
                }
                Some(begin) if hashes <= level => return Some(&SPEC[begin..offset]),
                _ => {}
            }
        }
        offset += line.len();
    }
    start.map(|begin| &SPEC[begin..])
}

/// `"11.1"` of a heading `"11.1 Outcome guarantees"`, `"5"` of `"5. Lifecycle"`.
fn heading_number(title: &str) -> Option<&str> {
    let token = title.split_whitespace().next()?;
    let number = token.trim_end_matches('.');
    (!number.is_empty() && number.chars().all(|c| c.is_ascii_digit() || c == '.')).then_some(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_run_from_their_heading_to_the_next_of_their_level() {
        let lifecycle = section("5").expect("§5");
        assert!(lifecycle.starts_with("## 5. Lifecycle"));
        assert!(!lifecycle.contains("## 6."));
        let outcomes = section("11.1").expect("§11.1");
        assert!(outcomes.starts_with("### 11.1 Outcome guarantees"));
        let reliability = section("11").expect("§11");
        assert!(
            reliability.contains("### 11.1"),
            "a section holds its subsections"
        );
        assert_eq!(section("99"), None);
        assert_eq!(section("5.9"), None);
    }
}
