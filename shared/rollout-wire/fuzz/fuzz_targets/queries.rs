//! Query bodies, per kind (first byte), decoded in both encodings and validated.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollout_wire::{Encoding, Query, QueryKind};

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    let kind = QueryKind::ALL[usize::from(*selector) % QueryKind::ALL.len()];
    for encoding in [Encoding::MessagePack, Encoding::Json] {
        if let Ok(query) = Query::decode(kind, body, encoding) {
            assert_eq!(query.kind(), kind);
            let _ = query.validate();
        }
    }
});
