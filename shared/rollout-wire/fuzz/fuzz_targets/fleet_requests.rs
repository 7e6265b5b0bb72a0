//! Fleet calls (`rollout.fleet.<ns>.<verb>`), per verb (first byte), decoded in both
//! encodings and validated.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollout_wire::{Encoding, FleetRequest, FleetVerb};

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    let verb = FleetVerb::ALL[usize::from(*selector) % FleetVerb::ALL.len()];
    for encoding in [Encoding::MessagePack, Encoding::Json] {
        if let Ok(request) = FleetRequest::decode(verb, body, encoding) {
            assert_eq!(request.verb(), verb);
            let _ = request.validate();
        }
    }
});
