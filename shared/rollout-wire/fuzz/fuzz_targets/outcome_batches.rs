//! Outcome reports (`rollout.metrics.<ns>`), single or batch, decoded in both encodings and
//! validated.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollout_wire::{decode_outcomes, Encoding};

fuzz_target!(|data: &[u8]| {
    for encoding in [Encoding::MessagePack, Encoding::Json] {
        if let Ok(reports) = decode_outcomes(data, encoding) {
            for report in &reports {
                let _ = report.validate();
            }
        }
    }
});
