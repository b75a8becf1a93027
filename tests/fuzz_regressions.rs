//! Every input in tests/data/fuzz-regressions/<target>/ through the same
//! function its fuzz target calls (fuzz/harness.rs): inputs that once made
//! a parser panic, exhaust memory or hang, found by `fuzz/run.sh`, and
//! hand-made hostile ones (truncated headers, huge sizes, NaN). Each must
//! come back, as a value or a clear error, without a panic. Runs in the
//! normal suite on the stable toolchain; no libFuzzer needed.
//!
//! A second test mutates each target's seeds (fuzz/seeds/) and
//! regressions a fixed number of times with a seeded generator (bit
//! flips, byte changes, cuts, insertions, splices; `FERD_FUZZ_MUTATIONS`
//! per target, default 20,000): no coverage guidance, but it runs the
//! harnesses on fresh hostile inputs in every `cargo test` at no build
//! cost (the instrumented build of `fuzz/` compiles tract again).

use std::path::Path;

#[path = "../fuzz/harness.rs"]
mod harness;

#[test]
fn every_fuzz_regression_input_returns_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-regressions");
    let mut failed = Vec::new();
    let mut ran = 0;
    for target in harness::TARGETS {
        let dir = root.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        // A target without inputs here would pass without testing anything.
        assert!(!files.is_empty(), "{}: no inputs", dir.display());
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| harness::run(target, &data));
            ran += 1;
            if outcome.is_err() {
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "panicked on {failed:#?}");
    println!("{ran} inputs, none panicked");
}

/// Knuth's MMIX LCG: the same mutations on every run, so a failure
/// reproduces.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four random edits of `data`, with `other` for splices.
fn mutate(rng: &mut Lcg, data: &[u8], other: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(d.len() + 1);
        // The byte an in-place edit changes (none in an empty input).
        let last = at.min(d.len().saturating_sub(1));
        match rng.below(7) {
            0 if !d.is_empty() => d[last] ^= 1 << rng.below(8),
            1 if !d.is_empty() => d[last] = rng.next() as u8,
            // Values parsers treat specially: 0, 0xff, ASCII digits and
            // separators of the text formats.
            2 if !d.is_empty() => d[last] = b"\0\xff9 =\n[\"-."[rng.below(10)],
            3 => d.truncate(at),
            4 => {
                let n = 1 + rng.below(16);
                let fill: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(at..at, fill);
            }
            5 if !d.is_empty() => {
                let end = (at + 1 + rng.below(64)).min(d.len());
                d.drain(at.min(end)..end);
            }
            _ => {
                let from = rng.below(other.len());
                let n = rng.below(other.len() - from + 1).min(256);
                d.splice(at..at, other[from..from + n].iter().copied());
            }
        }
    }
    d
}

#[test]
fn fuzz_targets_survive_mutated_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let per_target: usize = std::env::var("FERD_FUZZ_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut failed = Vec::new();
    for (t, target) in harness::TARGETS.iter().enumerate() {
        let mut inputs = Vec::new();
        for dir in [
            root.join("fuzz/seeds").join(target),
            root.join("tests/data/fuzz-regressions").join(target),
        ] {
            for entry in std::fs::read_dir(&dir).into_iter().flatten() {
                inputs.push(std::fs::read(entry.unwrap().path()).unwrap());
            }
        }
        assert!(!inputs.is_empty(), "{target}: no seeds");
        let mut rng = Lcg(0x5eed + t as u64);
        for i in 0..per_target {
            let a = &inputs[rng.below(inputs.len())];
            let b = &inputs[rng.below(inputs.len())];
            let data = mutate(&mut rng, a, b);
            if std::panic::catch_unwind(|| harness::run(target, &data)).is_err() {
                let out = root.join("target/fuzz-failures");
                std::fs::create_dir_all(&out).unwrap();
                let file = out.join(format!("{target}-{i}.bin"));
                std::fs::write(&file, &data).unwrap();
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(
        failed.is_empty(),
        "panicked (inputs saved; copy them to tests/data/fuzz-regressions/<target>/): {failed:#?}"
    );
}
