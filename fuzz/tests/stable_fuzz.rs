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

/// The committed seed corpus of the `collate` target (and the home of inputs kept as
/// regressions).
const SEED_DIR: &str = "corpus-seed/collate";

/// The outcomes the seed corpus must cover, one input each: every mode reaching labels that
/// train something, serially and on the parallel path, a row without a template, bad ids.
const SEED_OUTCOMES: &[&str] = &[
    "exact-found-trained",
    "exact-found-trained-parallel",
    "exact-missing",
    "trl-found-trained",
    "trl-found-trained-parallel",
    "bad-ids",
];

/// Every input of the seed corpus replays through the checks (a violated invariant panics) and
/// still reaches the outcome its file is named after; a missing or empty folder, an input that no
/// longer parses, or an outcome without its input fails the test. With
/// `SFTMASK_FUZZ_REPLAY_CORPUS=1`, every input of a local libFuzzer corpus (`corpus/collate/`,
/// git-ignored) is replayed as well.
#[test]
fn seed_corpus_replays() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds = root.join(SEED_DIR);
    let mut entries: Vec<_> = std::fs::read_dir(&seeds)
        .unwrap_or_else(|e| {
            panic!(
                "seed corpus {} is missing ({e}); regenerate it, see write_seed_corpus",
                seeds.display()
            )
        })
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "seed corpus {} is empty", seeds.display());
    let mut covered = std::collections::BTreeSet::new();
    for path in &entries {
        let data = std::fs::read(path).unwrap();
        let case = sftmask_fuzz::Case::arbitrary_take_rest(Unstructured::new(&data))
            .unwrap_or_else(|e| panic!("{} is not a Case ({e}): regenerate the seeds", path.display()));
        let outcome = sftmask_fuzz::run_case(&case).slug();
        let name = path.file_stem().unwrap().to_string_lossy();
        // Kept regressions may be named freely; seeds are named after their outcome.
        if SEED_OUTCOMES.contains(&name.as_ref()) {
            assert_eq!(outcome, name, "{} no longer reaches its outcome", path.display());
        }
        covered.insert(outcome);
    }
    for want in SEED_OUTCOMES {
        assert!(covered.contains(*want), "no seed input reaches {want}");
    }
    eprintln!("replayed {} seed inputs: {covered:?}", entries.len());
    if std::env::var_os("SFTMASK_FUZZ_REPLAY_CORPUS").is_some() {
        let local = root.join("corpus/collate");
        let entries = std::fs::read_dir(&local).unwrap_or_else(|e| panic!("{}: {e}", local.display()));
        let mut n = 0;
        for entry in entries {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            if let Ok(case) = sftmask_fuzz::Case::arbitrary_take_rest(Unstructured::new(&data)) {
                let _ = sftmask_fuzz::run_case(&case);
                n += 1;
            }
        }
        eprintln!("replayed {n} inputs of {}", local.display());
    }
}

/// Regenerates the seed corpus: seeded pseudo-random inputs, read as libFuzzer reads them
/// (`arbitrary_take_rest`), the shortest one found (of at least 16 bytes) for each of [`SEED_OUTCOMES`] written to
/// `corpus-seed/collate/<outcome>`. Deterministic; rerun it when `Case` changes shape:
///
/// ```sh
/// cd fuzz && cargo test --no-default-features --test stable_fuzz write_seed_corpus -- --ignored
/// ```
#[test]
#[ignore = "writes fuzz/corpus-seed/collate/; run on purpose"]
fn write_seed_corpus() {
    let mut state = 0x5eed_c0de_0000_0001u64;
    let mut best: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    for _ in 0..200_000 {
        // At least 16 bytes: an input that sets a few fields, not the all-default case.
        let len = 16 + (xorshift(&mut state) % 752) as usize;
        let buf: Vec<u8> = (0..len).map(|_| xorshift(&mut state) as u8).collect();
        let Ok(case) = sftmask_fuzz::Case::arbitrary_take_rest(Unstructured::new(&buf)) else {
            continue;
        };
        let slug = sftmask_fuzz::run_case(&case).slug();
        if SEED_OUTCOMES.contains(&slug.as_str()) && best.get(&slug).is_none_or(|b| b.len() > buf.len()) {
            best.insert(slug, buf);
        }
    }
    let missing: Vec<_> = SEED_OUTCOMES.iter().filter(|o| !best.contains_key(**o)).collect();
    assert!(missing.is_empty(), "no input found for {missing:?}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SEED_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    for (slug, data) in &best {
        std::fs::write(dir.join(slug), data).unwrap();
        eprintln!("{slug}: {} bytes", data.len());
    }
}
