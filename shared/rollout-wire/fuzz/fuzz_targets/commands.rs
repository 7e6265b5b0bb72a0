//! Command bodies, per verb: the first byte picks the verb (`rollout.cmd.<ns>.<verb>` and
//! the durable stream decode the same way), the rest is decoded as MessagePack and as JSON
//! under the request limits, and whatever decodes is validated.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollout_wire::{Command, CommandVerb, Encoding};

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    let verb = CommandVerb::ALL[usize::from(*selector) % CommandVerb::ALL.len()];
    for encoding in [Encoding::MessagePack, Encoding::Json] {
        if let Ok(command) = Command::decode(verb, body, encoding) {
            assert_eq!(command.verb(), verb);
            let _ = command.validate();
        }
    }
});
