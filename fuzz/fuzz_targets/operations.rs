//! Operation sequences (puts, deletes, batches, compactions, reopens, power cuts) on the
//! simulated disk, checked against a model after every step.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sturdykv::fuzzing::operations(data);
});
