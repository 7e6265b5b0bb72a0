//! Change events (`rollout.events.<ns>.<flag>`, and outbox entries), decoded in both
//! encodings under the service-output limits; a decoded snapshot is compiled, as an
//! evaluator would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollout_wire::{ChangeEvent, Encoding};

fuzz_target!(|data: &[u8]| {
    for encoding in [Encoding::MessagePack, Encoding::Json] {
        if let Ok(event) = ChangeEvent::decode(data, encoding) {
            if let Some(snapshot) = &event.snapshot {
                let _ = snapshot.compile();
            }
        }
    }
});
