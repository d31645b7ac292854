//! Log record decoding: arbitrary bytes must never panic, and whatever decodes must re-encode to
//! the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sturdykv::fuzzing::log_records(data);
});
