//! Heap allocations per frame in steady state, counted by a global
//! allocator: ferd's own code (everything `Pipeline::process` does outside
//! tract) must make none; tract's own, inside `LoadedModel::run`, are
//! counted apart and printed (`--nocapture`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use ferd::config::Config;
use ferd::pipeline::Pipeline;

struct Counting;

thread_local! {
    /// Counting is on for this thread (the test's, while it processes).
    static ON: Cell<bool> = const { Cell::new(false) };
    /// (ferd's, tract's) allocations and reallocations on this thread.
    static COUNTS: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

fn count() {
    // `try_with`: allocations during thread teardown find the keys gone.
    let _ = ON.try_with(|on| {
        if on.get() {
            let tract = ferd::vision::model::in_tract();
            COUNTS.with(|c| {
                let (f, t) = c.get();
                c.set(if tract { (f, t + 1) } else { (f + 1, t) });
            });
        }
    });
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

/// Runs `config` on `frames` copies of the demo clip's frame `index` (one
/// face, so every stage works on every frame) after a warm-up, and returns
/// (ferd's, tract's) allocations over the counted frames.
fn allocations(config: &Config, index: usize, frames: u64) -> (u64, u64) {
    let analyzer = ferd::daemon::load_analyzer(config).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut clip = ferd::source::open(&root.join("examples/demo.y4m")).unwrap();
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
    COUNTS.with(|c| c.set((0, 0)));
    ON.with(|on| on.set(true));
    run(frames, &mut frame);
    ON.with(|on| on.set(false));
    COUNTS.with(|c| c.get())
}

#[test]
fn the_pipeline_allocates_nothing_per_frame_outside_tract() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = Config::load(&root.join("systemd/ferd.toml")).unwrap();
    let (ours, tract) = allocations(&config, 2, 100);
    println!("expression pipeline, 100 frames: ferd {ours}, tract {tract} allocations");
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
    let (ours, tract) = allocations(&config, 2, 100);
    println!("driver pipeline, 100 frames: ferd {ours}, tract {tract} allocations");
    assert_eq!(ours, 0, "ferd allocated {ours} times in 100 steady frames");
}
