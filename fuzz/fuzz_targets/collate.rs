//! Structured target: synthetic tokenizer.json of every decoder family, ids, templates and
//! options through `Masker::inspect` / `Masker::collate`, checked against a naive rule.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|case: sftmask_fuzz::Case| {
    let _ = sftmask_fuzz::run_case(&case);
});
