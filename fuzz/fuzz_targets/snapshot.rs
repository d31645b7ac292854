//! Snapshot decoding: arbitrary bytes opened and read as a snapshot file must give values or
//! errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sturdykv::fuzzing::snapshot(data);
});
