//! Evaluation requests (`rollout.eval.<ns>`), decoded in both encodings and validated.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollout_wire::{decode, Encoding, EvalRequest};

fuzz_target!(|data: &[u8]| {
    for encoding in [Encoding::MessagePack, Encoding::Json] {
        if let Ok(request) = decode::<EvalRequest>(data, encoding) {
            if request.validate().is_ok() {
                let _ = request.target();
            }
        }
    }
});
