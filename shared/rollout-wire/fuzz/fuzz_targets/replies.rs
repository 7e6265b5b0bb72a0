//! Reply envelopes as clients decode them, for each result type (first byte), in both
//! encodings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollout_wire::{
    decode_reply, AgentAck, AuditPage, Deleted, Desired, Encoding, EvalMany, EvalResult, FlagList,
    FlagResult, PlanPreview, RolloutList, RolloutResult, RolloutStatus,
};

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    for encoding in [Encoding::MessagePack, Encoding::Json] {
        match selector % 13 {
            0 => drop(decode_reply::<FlagResult>(body, encoding)),
            1 => drop(decode_reply::<RolloutResult>(body, encoding)),
            2 => drop(decode_reply::<Deleted>(body, encoding)),
            3 => drop(decode_reply::<RolloutStatus>(body, encoding)),
            4 => drop(decode_reply::<RolloutList>(body, encoding)),
            5 => drop(decode_reply::<FlagList>(body, encoding)),
            6 => drop(decode_reply::<AuditPage>(body, encoding)),
            7 => drop(decode_reply::<PlanPreview>(body, encoding)),
            8 => drop(decode_reply::<EvalResult>(body, encoding)),
            9 => drop(decode_reply::<EvalMany>(body, encoding)),
            10 => drop(decode_reply::<Desired>(body, encoding)),
            11 => drop(decode_reply::<AgentAck>(body, encoding)),
            _ => drop(decode_reply::<serde_json::Value>(body, encoding)),
        }
    }
});
