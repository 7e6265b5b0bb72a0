//! The cheap pre-scan every decode runs before serde sees a byte: one iterative pass (no
//! recursion, no allocation beyond a stack of at most `max_depth` counters) that enforces
//! the nesting cap and, for MessagePack, that every declared length fits in the bytes that
//! remain and that the message is exactly one value.

use rmp::Marker;

use crate::codec::{CodecError, CodecErrorKind};

/// Reads big-endian lengths and skips payloads, refusing to run past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    fn take(&mut self, count: usize, what: &str) -> Result<&'a [u8], CodecError> {
        if count > self.remaining() {
            return Err(CodecError::new(
                CodecErrorKind::Malformed,
                format!(
                    "{what} at byte {} needs {count} bytes but only {} remain",
                    self.position,
                    self.remaining()
                ),
            ));
        }
        let start = self.position;
        self.position += count;
        Ok(&self.bytes[start..self.position])
    }

    fn marker(&mut self) -> Result<u8, CodecError> {
        let Some(byte) = self.bytes.get(self.position).copied() else {
            return Err(CodecError::new(
                CodecErrorKind::Malformed,
                format!(
                    "message ends at byte {} where a value should start",
                    self.position
                ),
            ));
        };
        self.position += 1;
        Ok(byte)
    }

    fn length(&mut self, width: usize, what: &str) -> Result<usize, CodecError> {
        let raw = self.take(width, what)?;
        let value = raw
            .iter()
            .fold(0_u64, |value, byte| (value << 8) | u64::from(*byte));
        // a length that does not fit usize cannot fit in the remaining bytes either
        Ok(usize::try_from(value).unwrap_or(usize::MAX))
    }
}

/// What one MessagePack header stands for.
enum Item {
    /// A complete scalar (its payload already skipped).
    Scalar,
    /// A container of this many values (map: twice the pairs).
    Container(usize),
}

/// Checks one MessagePack value: depth, declared lengths, no trailing bytes.
pub(crate) fn scan_msgpack(bytes: &[u8], max_depth: usize) -> Result<(), CodecError> {
    let mut cursor = Cursor { bytes, position: 0 };
    // values still to read in each open container, innermost last
    let mut open: Vec<usize> = Vec::with_capacity(max_depth.min(64));
    loop {
        let offset = cursor.position;
        let item = match Marker::from_u8(cursor.marker()?) {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                Item::Scalar
            }
            Marker::U8 | Marker::I8 => skip(&mut cursor, 1, "an integer")?,
            Marker::U16 | Marker::I16 => skip(&mut cursor, 2, "an integer")?,
            Marker::U32 | Marker::I32 | Marker::F32 => skip(&mut cursor, 4, "a number")?,
            Marker::U64 | Marker::I64 | Marker::F64 => skip(&mut cursor, 8, "a number")?,
            Marker::FixStr(length) => skip(&mut cursor, usize::from(length), "a string")?,
            Marker::Str8 | Marker::Bin8 => sized(&mut cursor, 1, 0, "a string or binary")?,
            Marker::Str16 | Marker::Bin16 => sized(&mut cursor, 2, 0, "a string or binary")?,
            Marker::Str32 | Marker::Bin32 => sized(&mut cursor, 4, 0, "a string or binary")?,
            Marker::FixExt1 => skip(&mut cursor, 2, "an extension")?,
            Marker::FixExt2 => skip(&mut cursor, 3, "an extension")?,
            Marker::FixExt4 => skip(&mut cursor, 5, "an extension")?,
            Marker::FixExt8 => skip(&mut cursor, 9, "an extension")?,
            Marker::FixExt16 => skip(&mut cursor, 17, "an extension")?,
            Marker::Ext8 => sized(&mut cursor, 1, 1, "an extension")?,
            Marker::Ext16 => sized(&mut cursor, 2, 1, "an extension")?,
            Marker::Ext32 => sized(&mut cursor, 4, 1, "an extension")?,
            Marker::FixArray(count) => Item::Container(usize::from(count)),
            Marker::Array16 => Item::Container(cursor.length(2, "an array length")?),
            Marker::Array32 => Item::Container(cursor.length(4, "an array length")?),
            Marker::FixMap(pairs) => Item::Container(usize::from(pairs) * 2),
            Marker::Map16 => Item::Container(cursor.length(2, "a map length")?.saturating_mul(2)),
            Marker::Map32 => Item::Container(cursor.length(4, "a map length")?.saturating_mul(2)),
            Marker::Reserved => {
                return Err(CodecError::new(
                    CodecErrorKind::Malformed,
                    format!("byte 0xc1 at {offset} is not a messagepack marker"),
                ))
            }
        };
        if let Item::Container(count) = item {
            if open.len() >= max_depth {
                return Err(too_deep(max_depth, offset));
            }
            // every value takes at least one byte
            if count > cursor.remaining() {
                return Err(CodecError::new(
                    CodecErrorKind::Malformed,
                    format!(
                        "container at byte {offset} declares {count} values but only {} bytes remain",
                        cursor.remaining()
                    ),
                ));
            }
            if count > 0 {
                open.push(count);
                continue;
            }
        }
        // one value is complete; it may complete its container, and that one its parent
        loop {
            let Some(left) = open.last_mut() else {
                if cursor.remaining() > 0 {
                    return Err(CodecError::new(
                        CodecErrorKind::Trailing,
                        format!(
                            "{} bytes follow the message at byte {}",
                            cursor.remaining(),
                            cursor.position
                        ),
                    ));
                }
                return Ok(());
            };
            *left -= 1;
            if *left > 0 {
                break;
            }
            open.pop();
        }
    }
}

fn skip(cursor: &mut Cursor<'_>, count: usize, what: &str) -> Result<Item, CodecError> {
    cursor.take(count, what)?;
    Ok(Item::Scalar)
}

/// A payload whose length comes first in `width` bytes, after which `extra` bytes (an
/// extension's type) precede the payload.
fn sized(
    cursor: &mut Cursor<'_>,
    width: usize,
    extra: usize,
    what: &str,
) -> Result<Item, CodecError> {
    let length = cursor.length(width, what)?;
    cursor.take(length.saturating_add(extra), what)?;
    Ok(Item::Scalar)
}

fn too_deep(max_depth: usize, offset: usize) -> CodecError {
    CodecError::new(
        CodecErrorKind::TooDeep,
        format!("message nests deeper than {max_depth} levels (at byte {offset})"),
    )
}

/// Checks JSON nesting outside string literals, balance, and that nothing follows a
/// top-level object or array. Everything else is left to serde_json.
pub(crate) fn scan_json(bytes: &[u8], max_depth: usize) -> Result<(), CodecError> {
    let mut depth: usize = 0;
    let mut in_string = false;
    let mut escaped = false;
    let mut top_closed = false;
    for (offset, byte) in bytes.iter().copied().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        if top_closed {
            if !matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
                return Err(CodecError::new(
                    CodecErrorKind::Trailing,
                    format!("unexpected content after the message at byte {offset}"),
                ));
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                if depth >= max_depth {
                    return Err(too_deep(max_depth, offset));
                }
                depth += 1;
            }
            b']' | b'}' => {
                if depth == 0 {
                    return Err(CodecError::new(
                        CodecErrorKind::Malformed,
                        format!("unbalanced {:?} at byte {offset}", char::from(byte)),
                    ));
                }
                depth -= 1;
                top_closed = depth == 0;
            }
            _ => {}
        }
    }
    if in_string {
        return Err(CodecError::new(
            CodecErrorKind::Malformed,
            "message ends inside a string",
        ));
    }
    if depth > 0 {
        return Err(CodecError::new(
            CodecErrorKind::Malformed,
            format!("message ends inside {depth} open objects or arrays"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(result: Result<(), CodecError>) -> Option<CodecErrorKind> {
        result.err().map(|error| error.kind())
    }

    #[test]
    fn accepts_one_complete_msgpack_value() {
        // {"a": [1, "xy", nil], "b": {}}
        let bytes = [
            0x82, 0xa1, b'a', 0x93, 0x01, 0xa2, b'x', b'y', 0xc0, 0xa1, b'b', 0x80,
        ];
        assert_eq!(kind_of(scan_msgpack(&bytes, 32)), None);
        assert_eq!(kind_of(scan_msgpack(&[0x05], 32)), None);
        assert_eq!(kind_of(scan_msgpack(&[0x90], 32)), None);
    }

    #[test]
    fn refuses_lengths_beyond_the_message() {
        let huge_array = [0xdd, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0];
        assert_eq!(
            kind_of(scan_msgpack(&huge_array, 32)),
            Some(CodecErrorKind::Malformed)
        );
        let huge_map = [0xdf, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            kind_of(scan_msgpack(&huge_map, 32)),
            Some(CodecErrorKind::Malformed)
        );
        let huge_string = [0xdb, 0xff, 0xff, 0xff, 0xff, b'a'];
        assert_eq!(
            kind_of(scan_msgpack(&huge_string, 32)),
            Some(CodecErrorKind::Malformed)
        );
        let huge_ext = [0xc9, 0xff, 0xff, 0xff, 0xff, 1];
        assert_eq!(
            kind_of(scan_msgpack(&huge_ext, 32)),
            Some(CodecErrorKind::Malformed)
        );
        assert_eq!(
            kind_of(scan_msgpack(&[], 32)),
            Some(CodecErrorKind::Malformed)
        );
        assert_eq!(
            kind_of(scan_msgpack(&[0xc1], 32)),
            Some(CodecErrorKind::Malformed)
        );
    }

    #[test]
    fn refuses_trailing_bytes_and_depth() {
        assert_eq!(
            kind_of(scan_msgpack(&[0x80, 0x00], 32)),
            Some(CodecErrorKind::Trailing)
        );
        let deep = vec![0x91_u8; 10_000];
        assert_eq!(
            kind_of(scan_msgpack(&deep, 32)),
            Some(CodecErrorKind::TooDeep)
        );
        let mut exactly = vec![0x91_u8; 31];
        exactly.push(0x90);
        assert_eq!(kind_of(scan_msgpack(&exactly, 32)), None);
        exactly.insert(0, 0x91);
        assert_eq!(
            kind_of(scan_msgpack(&exactly, 32)),
            Some(CodecErrorKind::TooDeep)
        );
    }

    #[test]
    fn json_depth_ignores_brackets_inside_strings() {
        let text = r#"{"a": "[[[[{{{{\"]]]", "b": [1, {"c": "\\"}]}"#;
        assert_eq!(kind_of(scan_json(text.as_bytes(), 3)), None);
        assert_eq!(
            kind_of(scan_json(text.as_bytes(), 2)),
            Some(CodecErrorKind::TooDeep)
        );
        let deep = "[".repeat(10_000);
        assert_eq!(
            kind_of(scan_json(deep.as_bytes(), 32)),
            Some(CodecErrorKind::TooDeep)
        );
        assert_eq!(
            kind_of(scan_json(b"{} {}", 32)),
            Some(CodecErrorKind::Trailing)
        );
        assert_eq!(kind_of(scan_json(b"{}  \n", 32)), None);
        assert_eq!(
            kind_of(scan_json(b"{\"a\": 1", 32)),
            Some(CodecErrorKind::Malformed)
        );
        assert_eq!(
            kind_of(scan_json(b"{\"a", 32)),
            Some(CodecErrorKind::Malformed)
        );
        assert_eq!(
            kind_of(scan_json(b"}", 32)),
            Some(CodecErrorKind::Malformed)
        );
    }
}
