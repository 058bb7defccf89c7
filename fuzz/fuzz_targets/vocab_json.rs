//! Raw target: arbitrary bytes as a tokenizer.json (use `-dict=fuzz/tokenizer.dict`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sftmask_fuzz::run_json(data);
});
