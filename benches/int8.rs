//! The int8 expression model against its fp32 twin, one inference at a
//! time through ferd's own model runner, the variants alternating inside
//! one process so that they share the machine's noise:
//!
//! - fp32: `models/expression.toml`;
//! - int8: `models/expression-kd-int8-nnef.toml` (the same weights
//!   quantized), optimised the way ferd loads it;
//! - where the patched tract-linalg chooses other kernels than stock tract
//!   on this machine (vendor/TRACT-PATCH.md), each model on stock's too:
//!   fp32 on its AVX-512 kernels (`TRACT_FERD_AVX512_F32`, cores with one
//!   512-bit FMA port), int8 on its K-major AVX2 kernel
//!   (`TRACT_FERD_AVX2_I8_KMAJOR`, AVX2 without VNNI).
//!
//! Run with `cargo bench --bench int8 [-- ROUNDS]` (release profile;
//! default 20 rounds of 50 inferences per variant, the first round not
//! counted). One thread. Prints each variant's median and the ratio of the
//! medians, then the same ratio round by round.
//!
//! `-- --only fp32|int8 N` runs N inferences of one variant and prints
//! nothing: the program to count instructions of on aarch64
//! (`../shared/tools/insn-count`, N = 11 minus N = 1, over 10).

use std::path::Path;
use std::time::Instant;

use ferd::vision::model::{LoadedModel, Task};
use tract_onnx::tract_core::knobs::KnobScope;

const PER_ROUND: usize = 50;

fn load(manifest: &str, knobs: &[(&str, &str)]) -> LoadedModel {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join(manifest);
    // The kernel is chosen when the plan is optimised, i.e. at load.
    KnobScope::new(knobs.iter().copied())
        .expect("knob scope")
        .enter(|| LoadedModel::load(&manifest, Task::Expression, None))
        .expect("loading the model")
}

/// One inference of `model` on `input`.
fn infer(model: &LoadedModel, input: &[f32]) {
    model
        .run_with(|buf| buf.copy_from_slice(input), |_| Ok(()))
        .expect("running the model");
}

/// A fixed input: a smooth pattern with texture, in the normalised range
/// the classifier sees ([-1, 1]). Neither model's time depends on values.
fn face_like_input() -> Vec<f32> {
    (0..48 * 48)
        .map(|i| {
            let (y, x) = ((i / 48) as f32, (i % 48) as f32);
            let texture = ((i * 7919) % 97) as f32 / 485.0;
            ((x * 0.13).sin() * (y * 0.07).cos() + texture).clamp(-1.0, 1.0)
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

const FP32: &str = "models/expression.toml";
const INT8: &str = "models/expression-kd-int8-nnef.toml";

fn main() {
    // `cargo bench` passes `--bench`; otherwise a count, or `--only`.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|a| a == "--only") {
        let manifest = match args.get(at + 1).map(String::as_str) {
            Some("fp32") => FP32,
            Some("int8") => INT8,
            other => panic!("--only takes fp32 or int8, not {other:?}"),
        };
        let runs: usize = args
            .get(at + 2)
            .and_then(|n| n.parse().ok())
            .expect("--only NAME N: N inferences");
        let model = load(manifest, &[]);
        let input = face_like_input();
        for _ in 0..runs {
            infer(&model, &input);
        }
        return;
    }
    let rounds = args
        .iter()
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(20)
        .max(2);
    let (fp32, int8) = (load(FP32, &[]), load(INT8, &[]));
    // Stock tract's kernel choices, where the patched tract-linalg makes
    // another on this machine (vendor/TRACT-PATCH.md): f32 on AVX-512 with
    // one 512-bit FMA port, int8 on AVX2 without VNNI.
    let stock_fp32 = load(FP32, &[("TRACT_FERD_AVX512_F32", "1")]);
    let stock_int8 = load(INT8, &[("TRACT_FERD_AVX2_I8_KMAJOR", "1")]);
    let differs = [
        stock_fp32.kernels() != fp32.kernels(),
        stock_int8.kernels() != int8.kernels(),
    ];
    let mut variants = vec![("fp32", fp32), ("int8", int8)];
    if differs[0] {
        variants.push(("fp32, stock AVX-512 kernels", stock_fp32));
    }
    if differs[1] {
        variants.push(("int8, stock K-major kernel", stock_int8));
    }
    let input = face_like_input();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut round_ratios: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        let mut round_medians = Vec::new();
        for (i, (_, model)) in variants.iter().enumerate() {
            let mut this_round = Vec::with_capacity(PER_ROUND);
            for _ in 0..PER_ROUND {
                let began = Instant::now();
                infer(model, &input);
                this_round.push(began.elapsed().as_secs_f64() * 1e3);
            }
            if round > 0 {
                times[i].extend_from_slice(&this_round);
            }
            round_medians.push(median(&mut this_round));
        }
        if round > 0 {
            for (i, m) in round_medians.iter().enumerate() {
                round_ratios[i].push(round_medians[0] / m);
            }
        }
    }
    println!(
        "expression classifier, one 48×48 inference, {} rounds × {PER_ROUND} runs per variant, alternating",
        rounds - 1
    );
    let fp32 = median(&mut times[0]);
    for (i, (name, _)) in variants.iter().enumerate() {
        let m = median(&mut times[i]);
        let per_round: Vec<String> = round_ratios[i].iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "  {name:<28} median {m:7.3} ms   fp32/this {:.2}×   by round: {}",
            fp32 / m,
            per_round.join(" ")
        );
    }
}
