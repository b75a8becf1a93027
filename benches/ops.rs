//! Where each model's time goes inside tract, op kind by op kind, and what
//! the patched tract's f32 changes (vendor/TRACT-PATCH.md) save: every run
//! is timed node by node through tract's own evaluation hook
//! (`SimpleState::run_plan_with_eval`), alternating runs of the patched
//! plan and of stock tract's (optimised with `TRACT_FERD_AVX512_F32=1` and
//! `TRACT_FERD_STOCK_EVAL=1`: stock tract's kernel choice and product
//! orientation; evaluated with `TRACT_FERD_STOCK_EVAL=1`: stock tract's code
//! for the ops with fast paths) so that both columns see the same machine
//! noise.
//!
//! Run with `cargo bench --bench ops [-- ROUNDS]` (release profile; default
//! 20 rounds, the first of each kind not counted). Models: the packaged
//! detector at 320×240, the expression classifier (fp32, and the int8
//! default), and the landmark stage's face mesh and iris model, on a fixed
//! synthetic input; one thread. With `FERD_OPS_BY_NODE=1` in the
//! environment the rows are the plan's nodes (name, op and what tract says
//! of it) instead of op kinds. `FERD_OPS_DETECTOR=HxW` profiles the
//! detector at that input size as well (a window searched around a
//! followed face is 96, 144 or 192 square), and `FERD_OPS_AGAINST=KNOB=VALUE`
//! replaces the stock column with the patched plan optimised under that
//! tract knob, to weigh one planning choice against the default.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use ferd::vision::model::{LoadedModel, Task};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::knobs::KnobScope;
use tract_onnx::tract_core::plan::{eval, SimpleState};

/// Seconds per op kind (or per node: its id first, so that the rows come
/// in plan order), summed over the counted runs: (patched, stock).
type Totals = BTreeMap<(usize, String), [f64; 2]>;

fn profile(name: &str, manifest: &str, task: Task, size: Option<[usize; 2]>, rounds: usize) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join(manifest);
    let model = LoadedModel::load(&manifest, task, size).expect("loading the model");
    // Stock tract's kernel choice too, made when the plan is optimised
    // (f32 products on AVX-512 where the patch moves them off it, shallow
    // products oriented as stock does); or, with `FERD_OPS_AGAINST`, the
    // patched plan optimised under that knob, both columns then evaluated
    // the patched way.
    let against = std::env::var("FERD_OPS_AGAINST").ok();
    let against = against.as_deref().and_then(|a| a.split_once('='));
    let second_knobs = match against {
        Some(knob) => vec![knob],
        None => vec![
            ("TRACT_FERD_AVX512_F32", "1"),
            ("TRACT_FERD_STOCK_EVAL", "1"),
        ],
    };
    let stock_model = KnobScope::new(second_knobs)
        .expect("knob scope")
        .enter(|| LoadedModel::load(&manifest, task, size))
        .expect("loading the model");
    let stock_eval = if against.is_some() {
        ["0", "0"]
    } else {
        ["0", "1"]
    };
    let shape = model.input_shape.clone();
    let n: usize = shape.iter().product();
    // Values spread over the range the detector's BGR-minus-mean input has.
    let values = (0..n).map(|i| ((i * 7919) % 255) as f32 - 120.0).collect();
    let input: Tensor = tract_ndarray::ArrayD::from_shape_vec(shape.to_vec(), values)
        .expect("input shape")
        .into();
    let by_node = std::env::var_os("FERD_OPS_BY_NODE").is_some_and(|v| v == "1");
    let mut totals = Totals::new();
    for round in 0..rounds * 2 {
        let stock = round % 2;
        let knob =
            KnobScope::new([("TRACT_FERD_STOCK_EVAL", stock_eval[stock])]).expect("knob scope");
        knob.enter(|| {
            let plan = [&model.plan, &stock_model.plan][stock];
            let mut state = SimpleState::new(plan).expect("tract state");
            state
                .run_plan_with_eval(
                    tvec![input.clone().into_tvalue()],
                    |ctx, op_state, node, inputs| {
                        let began = Instant::now();
                        let out = eval(ctx, op_state, node, inputs);
                        let took = began.elapsed().as_secs_f64();
                        if round >= 2 {
                            let key = if by_node {
                                let info = node.op().info().unwrap_or_default().join("; ");
                                (
                                    node.id,
                                    format!("{} {} {info}", node.name, node.op().name()),
                                )
                            } else {
                                (0, node.op().name().to_string())
                            };
                            totals.entry(key).or_default()[stock] += took;
                        }
                        out
                    },
                )
                .expect("running the model");
        });
    }
    let counted = (rounds - 1) as f64;
    println!(
        "{name} ({shape:?}): ms per run, mean of {} runs each way",
        rounds - 1
    );
    let second = against.map_or("stock", |(knob, _)| knob);
    println!("  {:<20} {:>9} {:>9}", "op", "patched", second);
    let mut sum = [0.0; 2];
    for ((_, op), t) in &totals {
        let ms = t.map(|s| s / counted * 1e3);
        sum = [sum[0] + ms[0], sum[1] + ms[1]];
        if ms[0].max(ms[1]) >= 0.01 {
            println!("  {op:<20} {:>9.3} {:>9.3}", ms[0], ms[1]);
        }
    }
    println!("  {:<20} {:>9.3} {:>9.3}\n", "all ops", sum[0], sum[1]);
}

fn main() {
    // `cargo bench` passes `--bench`; the one optional argument is a count.
    let rounds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(20)
        .max(2);
    // `FERD_OPS_DETECTOR=HxW` profiles the detector at another input
    // size too, e.g. one of the windows searched around followed faces.
    let sizes = std::env::var("FERD_OPS_DETECTOR").ok().and_then(|v| {
        let (h, w) = v.split_once('x')?;
        Some([h.parse().ok()?, w.parse().ok()?])
    });
    for size in [Some([240, 320]), sizes].into_iter().flatten() {
        profile(
            "detector",
            "models/retinaface-mnet025.toml",
            Task::FaceDetector,
            Some(size),
            rounds,
        );
    }
    profile(
        "classifier",
        "models/expression.toml",
        Task::Expression,
        None,
        rounds,
    );
    // The shipped default: the same network quantized (NNEF, int8 products).
    profile(
        "classifier int8",
        "models/expression-kd-int8-nnef.toml",
        Task::Expression,
        None,
        rounds,
    );
    // The landmark stage (fatigue rules): one mesh and two iris runs per
    // face and frame.
    profile(
        "face mesh",
        "models/face-landmark.toml",
        Task::FaceLandmarks,
        None,
        rounds,
    );
    profile(
        "iris",
        "models/iris-landmark.toml",
        Task::IrisLandmarks,
        None,
        rounds,
    );
}
