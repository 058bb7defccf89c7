//! The stable-toolchain fallback: seeded pseudo-random bytes through the same checks as the
//! libFuzzer targets (no coverage guidance). `SFTMASK_FUZZ_ITERS` sets the number of cases
//! (default 2000), `SFTMASK_FUZZ_SECONDS` a time budget, `SFTMASK_FUZZ_SEED` the seed.
//!
//! ```sh
//! cd fuzz && cargo test --no-default-features
//! ```

use arbitrary::{Arbitrary, Unstructured};

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn random_cases_uphold_the_invariants() {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let iters = env("SFTMASK_FUZZ_ITERS").unwrap_or(2000);
    let budget = env("SFTMASK_FUZZ_SECONDS").map(std::time::Duration::from_secs);
    let started = std::time::Instant::now();
    let mut state = env("SFTMASK_FUZZ_SEED").unwrap_or(0x5eed_5f7a_a5c0_ffee) | 1;
    let mut buf = Vec::new();
    let mut outcomes = std::collections::BTreeMap::new();
    let mut done = 0u64;
    for i in 0..iters {
        if budget.is_some_and(|b| started.elapsed() > b) {
            break;
        }
        done += 1;
        let len = (xorshift(&mut state) % 2048) as usize;
        buf.clear();
        buf.extend((0..len).map(|_| xorshift(&mut state) as u8));
        let mut u = Unstructured::new(&buf);
        if let Ok(case) = sftmask_fuzz::Case::arbitrary(&mut u) {
            match std::panic::catch_unwind(|| sftmask_fuzz::run_case(&case)) {
                Ok(outcome) => *outcomes.entry(format!("{outcome:?}")).or_insert(0u64) += 1,
                Err(_) => panic!("case {i} failed: {case:?}"),
            }
        }
        sftmask_fuzz::run_json(&buf);
    }
    eprintln!(
        "{done} cases in {:.1} s: {outcomes:#?}",
        started.elapsed().as_secs_f64()
    );
}

/// Every input kept under `regressions/collate/` still passes (and, with
/// `SFTMASK_FUZZ_REPLAY_CORPUS=1`, every input of a local libFuzzer corpus, `corpus/collate/`).
#[test]
fn kept_inputs_replay() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec!["regressions/collate"];
    if std::env::var_os("SFTMASK_FUZZ_REPLAY_CORPUS").is_some() {
        dirs.push("corpus/collate");
    }
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let data = std::fs::read(entry.path()).unwrap();
            if let Ok(case) = sftmask_fuzz::Case::arbitrary_take_rest(Unstructured::new(&data)) {
                let _ = sftmask_fuzz::run_case(&case);
            }
        }
    }
}
