//! A model on a thread of its own, so that a second core runs one model
//! while the calling thread runs another (the landmark stage's two eyes:
//! two runs of the iris model per face, each as costly as the face mesh).
//!
//! [`ModelWorker`] owns a [`LoadedModel`] (a [`LoadedModel::twin`] of the
//! caller's: the same plan, its own state) and one job slot.
//! [`ModelWorker::post`] fills the model's input on the calling thread, so
//! the frame stays borrowed there and is never sent, and wakes the worker;
//! [`ModelWorker::wait`] blocks until that run is over and lends its
//! output to the caller. One job at a time. The slot's buffers are kept
//! from job to job, so a job allocates nothing in ferd's code; tract
//! allocates its values inside the run, as on any thread.
//!
//! The thread is persistent (started once, with the models) rather than
//! spawned per frame: spawning allocates and costs more than the wake-up.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tract_onnx::prelude::TValue;

use super::model::{LoadedModel, ModelError};

/// Copies the values the caller wants from a run's outputs (`path`: the
/// model file, for errors) into `out` (empty, its capacity kept from run
/// to run).
pub type PickOutput =
    fn(path: &Path, outputs: &[TValue], out: &mut Vec<f32>) -> Result<(), ModelError>;

/// Models running on a thread of their own, one job at a time.
pub struct ModelWorker {
    shared: Arc<Shared>,
    /// `None` only once dropped.
    thread: Option<JoinHandle<()>>,
    /// The model file, for errors.
    path: std::path::PathBuf,
    /// Each model's input length, in values.
    input_lens: Vec<usize>,
}

struct Shared {
    slot: Mutex<Slot>,
    /// Signalled at every change of `slot` (a job posted or done, stop).
    changed: Condvar,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing posted, or the last result taken.
    Idle,
    /// The input is filled; the worker runs it.
    Posted,
    /// The run is over; its output (or error) waits in the slot.
    Done,
    /// The worker thread has ended (it panicked outside tract's run,
    /// which the model catches): no job will run again.
    Gone,
}

struct Slot {
    phase: Phase,
    /// The owner is being dropped: the worker returns.
    stop: bool,
    /// Which of the worker's models the next run is for.
    model: usize,
    /// The next run's input: as many values as the largest model's input
    /// tensor, of which the run's model takes its own length.
    input: Vec<f32>,
    /// The last run's output values, as [`PickOutput`] chose them.
    output: Vec<f32>,
    /// The last run's error, if it failed.
    error: Option<ModelError>,
}

/// Locks the slot. A panic while it was held (only possible in the
/// caller's `fill` or `read`) leaves it consistent: every field is written
/// whole.
fn lock(m: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ModelWorker {
    /// Starts the thread (named `name`) that runs `models` (twins of the
    /// caller's, or other plans of one network), one job at a time; `pick`
    /// chooses the output values the caller wants after each run. At
    /// least one model.
    pub fn start(
        models: Vec<LoadedModel>,
        name: &str,
        pick: PickOutput,
    ) -> Result<ModelWorker, ModelError> {
        let input_lens: Vec<usize> = models
            .iter()
            .map(|m| m.input_shape.iter().product())
            .collect();
        let path = match models.first() {
            Some(m) => m.path.clone(),
            None => {
                return Err(ModelError::Tract {
                    path: name.into(),
                    stage: "start its thread",
                    message: "no model to run".into(),
                })
            }
        };
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                phase: Phase::Idle,
                stop: false,
                model: 0,
                input: vec![0.0; input_lens.iter().copied().max().unwrap_or(0)],
                output: Vec::new(),
                error: None,
            }),
            changed: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn({
                let shared = Arc::clone(&shared);
                move || serve(&shared, &models, pick)
            })
            .map_err(|e| ModelError::Tract {
                path: path.clone(),
                stage: "start its thread",
                message: e.to_string(),
            })?;
        Ok(ModelWorker {
            shared,
            thread: Some(thread),
            path,
            input_lens,
        })
    }

    /// Fills the input of model `which` (an index into the models given
    /// to [`ModelWorker::start`]) with `fill` (every value, in the
    /// model's layout; the buffer holds an earlier job's values) here,
    /// and starts the run on the worker. A job posted before and not
    /// waited for is waited for first and its result dropped. An index
    /// out of range is an error.
    pub fn post(&self, which: usize, fill: impl FnOnce(&mut [f32])) -> Result<(), ModelError> {
        let Some(&len) = self.input_lens.get(which) else {
            return Err(ModelError::Tract {
                path: self.path.clone(),
                stage: "post to its thread",
                message: format!("no model {which}"),
            });
        };
        let mut slot = lock(&self.shared.slot);
        while slot.phase == Phase::Posted {
            slot = self.wait_change(slot);
        }
        if slot.phase == Phase::Gone {
            return Err(self.gone());
        }
        fill(&mut slot.input[..len]);
        slot.model = which;
        slot.error = None;
        slot.phase = Phase::Posted;
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Waits for the run [`ModelWorker::post`] started and gives its
    /// output to `read`; the run's error if it failed. Without a posted
    /// job, an error.
    pub fn wait<R>(&self, read: impl FnOnce(&[f32]) -> R) -> Result<R, ModelError> {
        let mut slot = lock(&self.shared.slot);
        while slot.phase == Phase::Posted {
            slot = self.wait_change(slot);
        }
        match slot.phase {
            Phase::Done => {
                slot.phase = Phase::Idle;
                match slot.error.take() {
                    Some(e) => Err(e),
                    None => Ok(read(&slot.output)),
                }
            }
            Phase::Gone => Err(self.gone()),
            Phase::Idle | Phase::Posted => Err(ModelError::Tract {
                path: self.path.clone(),
                stage: "wait for its thread",
                message: "no run was posted".into(),
            }),
        }
    }

    fn wait_change<'a>(&self, slot: MutexGuard<'a, Slot>) -> MutexGuard<'a, Slot> {
        self.shared
            .changed
            .wait(slot)
            .unwrap_or_else(|e| e.into_inner())
    }

    fn gone(&self) -> ModelError {
        ModelError::Tract {
            path: self.path.clone(),
            stage: "run on its thread",
            message: "the thread has ended (it panicked; see the log)".into(),
        }
    }
}

impl Drop for ModelWorker {
    /// Stops the thread (after the run in progress, if any) and joins it.
    fn drop(&mut self) {
        lock(&self.shared.slot).stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            // A panic in the thread was already marked `Gone` and printed
            // by the panic hook; nothing more to report here.
            let _ = thread.join();
        }
    }
}

/// Marks the slot `Gone` when the worker's loop is left by a panic, so a
/// caller waiting for it gets an error instead of waiting for ever.
struct GoneOnUnwind<'a>(&'a Shared);

impl Drop for GoneOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            lock(&self.0.slot).phase = Phase::Gone;
            self.0.changed.notify_all();
        }
    }
}

/// The worker's loop: runs each posted job until told to stop. The run
/// itself happens with the slot unlocked (its buffers taken out of it, a
/// move, no copy), so the caller can post-check or drop meanwhile.
fn serve(shared: &Shared, models: &[LoadedModel], pick: PickOutput) {
    let _guard = GoneOnUnwind(shared);
    let mut slot = lock(&shared.slot);
    loop {
        if slot.stop {
            return;
        }
        if slot.phase != Phase::Posted {
            slot = shared.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
            continue;
        }
        let input = std::mem::take(&mut slot.input);
        let mut output = std::mem::take(&mut slot.output);
        // `post` checked the index.
        let model = &models[slot.model];
        drop(slot);
        // The input holds at least this model's input length (the
        // largest of them), and `run_with` hands over a buffer of it.
        let result = model.run_with(
            |buf| {
                let n = buf.len();
                buf.copy_from_slice(&input[..n]);
            },
            |outputs| {
                output.clear();
                pick(&model.path, outputs, &mut output)
            },
        );
        slot = lock(&shared.slot);
        slot.input = input;
        slot.output = output;
        slot.error = result.err();
        slot.phase = Phase::Done;
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::model::Task;

    fn iris() -> LoadedModel {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/iris-landmark.toml");
        LoadedModel::load(&manifest, Task::IrisLandmarks, None).unwrap()
    }

    /// The output with the most values (the iris model's eye contour).
    fn largest(path: &Path, outputs: &[TValue], out: &mut Vec<f32>) -> Result<(), ModelError> {
        let o = outputs.iter().max_by_key(|o| o.len()).unwrap();
        out.extend_from_slice(crate::vision::model::output_floats(path, o)?);
        Ok(())
    }

    /// A ramp input that differs from job to job.
    fn fill(k: usize) -> impl FnOnce(&mut [f32]) {
        move |input: &mut [f32]| {
            for (i, v) in input.iter_mut().enumerate() {
                *v = ((i * 31 + k * 7) % 256) as f32 / 255.0;
            }
        }
    }

    #[test]
    fn jobs_on_the_thread_give_what_the_calling_thread_gets() {
        let model = iris();
        let worker =
            ModelWorker::start(vec![model.twin().unwrap()], "test-worker", largest).unwrap();
        for k in 0..3 {
            let here = model
                .run_with(fill(k), |outputs| {
                    let mut v = Vec::new();
                    largest(&model.path, outputs, &mut v)?;
                    Ok(v)
                })
                .unwrap();
            worker.post(0, fill(k)).unwrap();
            let there = worker.wait(|out| out.to_vec()).unwrap();
            assert!(!here.is_empty());
            assert_eq!(here, there, "job {k}");
        }
        // Nothing posted: an error, not a wait for ever.
        let err = worker.wait(|_| ()).unwrap_err();
        assert!(err.to_string().contains("no run was posted"), "{err}");
    }

    /// A panic on the worker (here in the output picker; tract's own are
    /// caught by the model) ends the thread: the caller gets an error, now
    /// and for later jobs, never a hang; dropping the worker still returns.
    #[test]
    fn a_panicking_thread_is_an_error_for_the_caller() {
        fn panics(_: &Path, _: &[TValue], _: &mut Vec<f32>) -> Result<(), ModelError> {
            panic!("picker bug");
        }
        let worker = ModelWorker::start(vec![iris()], "test-worker-panics", panics).unwrap();
        // A model it does not have: an error, nothing posted.
        assert!(worker.post(1, fill(0)).is_err());
        worker.post(0, fill(0)).unwrap();
        let err = worker.wait(|_| ()).unwrap_err();
        assert!(err.to_string().contains("the thread has ended"), "{err}");
        assert!(worker.post(0, fill(1)).is_err());
        drop(worker);
    }
}
