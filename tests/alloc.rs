//! Heap allocations per frame in steady state, counted by a global
//! allocator: ferd's own code (everything `Pipeline::process` does outside
//! tract, on its thread and on the threads it hands work to, the eye
//! thread included) must make none; tract's own, inside `LoadedModel::run`,
//! are counted apart and printed (`--nocapture`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use ferd::config::Config;
use ferd::pipeline::Pipeline;

struct Counting;

/// Counting is on, in every thread of the process: the pipeline's own
/// and the threads it started (the landmark stage's eye thread). Tests
/// take [`ONE_AT_A_TIME`] so that no other test's allocations count.
static ON: AtomicBool = AtomicBool::new(false);
/// ferd's and tract's allocations and reallocations while `ON`.
static FERD: AtomicU64 = AtomicU64::new(0);
static TRACT: AtomicU64 = AtomicU64::new(0);
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn count() {
    if ON.load(Ordering::Relaxed) {
        // `in_tract` is per thread: a run on the eye thread marks that
        // thread.
        let tract = ferd::vision::model::in_tract();
        if tract { &TRACT } else { &FERD }.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `config` on `frames` copies of frame `index` of `source` (a path
/// under the repository; faces in it, so every stage works on every frame)
/// after a warm-up, and returns (ferd's, tract's) allocations over the
/// counted frames.
fn allocations(config: &Config, source: &str, index: usize, frames: u64) -> (u64, u64) {
    // Held from loading on: the other test's loading and warm-up would
    // count in this one's window.
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let analyzer = ferd::daemon::load_analyzer(config).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut clip = ferd::source::open(&root.join(source)).unwrap();
    let mut frame = None;
    for _ in 0..=index {
        frame = clip.next_frame();
    }
    let mut frame = frame.unwrap().unwrap();
    let mut pipeline = Pipeline::new(Box::new(analyzer), config, Vec::new(), None);
    let step = frame.timestamp;
    let mut run = |n: u64, frame: &mut ferd::frame::Frame| {
        for _ in 0..n {
            frame.timestamp += step.max(std::time::Duration::from_millis(200));
            frame.sequence += 1;
            assert!(pipeline.process(frame));
        }
    };
    // Warm-up: buffers grow to their steady size, the track is made and
    // its first expression reported.
    run(20, &mut frame);
    FERD.store(0, Ordering::Relaxed);
    TRACT.store(0, Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
    run(frames, &mut frame);
    ON.store(false, Ordering::Relaxed);
    (FERD.load(Ordering::Relaxed), TRACT.load(Ordering::Relaxed))
}

#[test]
fn the_pipeline_allocates_nothing_per_frame_outside_tract() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = Config::load(&root.join("systemd/ferd.toml")).unwrap();
    let (ours, tract) = allocations(&config, "examples/demo.y4m", 2, 100);
    println!("expression pipeline, 100 frames: ferd {ours}, tract {tract} allocations");
    assert_eq!(ours, 0, "ferd allocated {ours} times in 100 steady frames");
}

/// Two faces a frame: with a second core, the second face is classified
/// on the classifier's own thread (`Classifier::with_thread`).
#[test]
fn two_faces_a_frame_allocate_nothing_outside_tract() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = Config::load(&root.join("systemd/ferd.toml")).unwrap();
    let (ours, tract) = allocations(&config, "tests/data/faces/two_faces.png", 0, 100);
    println!("expression pipeline, two faces, 100 frames: ferd {ours}, tract {tract} allocations");
    assert_eq!(ours, 0, "ferd allocated {ours} times in 100 steady frames");
}

#[test]
fn the_driver_pipeline_allocates_nothing_per_frame_outside_tract() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut text = std::fs::read_to_string(root.join("systemd/ferd.toml")).unwrap();
    // An eye rule brings in the landmark stage (mesh, iris, pose) and the
    // per-track driver state.
    text += "\n[[rule]]\nname = \"asleep\"\neyes_closed_for = 2.0\n";
    let config = Config::parse(&text, Path::new("ferd.toml"), &root.join("systemd")).unwrap();
    assert!(config.needs_landmarks());
    let (ours, tract) = allocations(&config, "examples/demo.y4m", 2, 100);
    println!("driver pipeline, 100 frames: ferd {ours}, tract {tract} allocations");
    assert_eq!(ours, 0, "ferd allocated {ours} times in 100 steady frames");
}
