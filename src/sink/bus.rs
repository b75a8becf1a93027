//! The event bus: the analysis thread stamps each event (run id and
//! sequence number) and serialises it once; the result fans out through one
//! bounded queue per sink to that sink's own thread.
//!
//! The analysis loop never waits for a sink. A sink that falls behind (a
//! frozen broker, a slow disk, a stalled socket reader) finds its queue full:
//! the newest event is dropped for that sink alone and counted, and the sink
//! reports the count as an `events_dropped` event when it catches up. A
//! sink that must not lose events (MQTT) takes them off its queue into its
//! own on-disk spool at once, so its queue only fills if the disk stalls.
//!
//! GPIO stays a direct [`EventSink`] of the pipeline: it only updates
//! shared state under a mutex (its own thread drives the lines), and an
//! alarm must not wait behind a queue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::events::{Event, EventKind};
use crate::sink::events::{EventSink, SinkError};

/// Events each sink's queue holds before it drops: a few seconds of a
/// busy scene (one expression event per track per change), so that a sink
/// that pauses for a moment (a disk flush, a TLS handshake) loses nothing.
pub const QUEUE_CAPACITY: usize = 1024;

/// One event as every sink receives it: stamped and serialised once.
#[derive(Debug)]
pub struct Published {
    /// The event's sequence number in this run, from 1.
    pub seq: u64,
    /// The event itself, for sinks that act on its fields (MQTT's retained
    /// alert and state topics).
    pub event: Event,
    /// The event as one JSON line, without the newline; carries `run` and
    /// `seq`.
    pub line: String,
}

/// The run id and the sequence counter, shared by the bus and the sink
/// threads (which stamp their own `events_dropped` notices), so that `seq`
/// is unique and increasing across every event of the run.
#[derive(Debug, Clone)]
pub struct Stamp {
    run: Arc<str>,
    last: Arc<AtomicU64>,
}

impl Stamp {
    /// A new run with a random id: 16 hex digits.
    pub fn new() -> Stamp {
        Stamp::with_run(&random_run_id())
    }

    /// A run with a given id (tests).
    pub fn with_run(run: &str) -> Stamp {
        Stamp {
            run: run.into(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The run id.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The event with the next sequence number, serialised.
    pub fn publish(&self, event: Event) -> Published {
        let seq = self.last.fetch_add(1, Ordering::Relaxed) + 1;
        let line = event.to_json(&self.run, seq);
        Published { seq, event, line }
    }
}

impl Default for Stamp {
    fn default() -> Self {
        Stamp::new()
    }
}

/// 64 random bits as hex. std's `RandomState` is seeded from the operating
/// system's random source, which is all a run id needs: distinct runs of
/// one device, and of devices cloned from one SD image, must not collide.
fn random_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// A sink thread's end of its queue.
pub struct Subscription {
    name: &'static str,
    rx: Receiver<Arc<Published>>,
    dropped: Arc<AtomicU64>,
    stamp: Stamp,
}

impl Subscription {
    /// The next event, waiting at most `timeout`. `Disconnected` means the
    /// pipeline has ended and every event sent has been received.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Arc<Published>, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Option<Arc<Published>> {
        self.rx.try_recv().ok()
    }

    /// How many events this sink's queue dropped since the last call, with
    /// an `events_dropped` notice saying so; `None` if it dropped nothing.
    pub fn dropped_notice(&self) -> Option<(u64, Published)> {
        let count = self.take_dropped();
        (count > 0).then(|| (count, self.notice(count)))
    }

    /// How many events this sink's queue dropped since the last call, for
    /// a sink that folds them into a notice of its own (no sequence number
    /// is spent on a notice that would be thrown away).
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }

    /// An `events_dropped` notice for `count` events this sink itself lost
    /// (write errors, a full spool), stamped in sequence.
    pub fn notice(&self, count: u64) -> Published {
        self.stamp.publish(Event::new(
            EventKind::EventsDropped {
                sink: self.name.to_string(),
                count,
            },
            Duration::ZERO,
            0,
        ))
    }

    /// The sink's name (`output`, `socket`, `mqtt`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The run's stamp.
    pub fn stamp(&self) -> &Stamp {
        &self.stamp
    }

    /// A subscription with no bus behind it, for unit tests that drive a
    /// sink's own logic step by step.
    #[cfg(test)]
    pub(crate) fn detached(name: &'static str, stamp: &Stamp) -> Subscription {
        let (_, rx) = mpsc::sync_channel(1);
        Subscription {
            name,
            rx,
            dropped: Arc::new(AtomicU64::new(0)),
            stamp: stamp.clone(),
        }
    }
}

/// What a sink thread did, returned when it ends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Events delivered (written, sent and acknowledged, ...).
    pub delivered: u64,
    /// Events lost: dropped by the queue or the sink, or failed to write.
    pub lost: u64,
}

/// A sink that runs on its own thread, with the name it goes by in
/// `events_dropped` and logs.
pub type Named = (&'static str, Box<dyn Worker>);

/// A sink that runs on its own thread.
pub trait Worker: Send {
    /// Takes events until the subscription disconnects, delivers what it
    /// still holds within its own time limit, and reports.
    fn run(self: Box<Self>, events: Subscription) -> Report;
}

struct Queue {
    name: &'static str,
    tx: SyncSender<Arc<Published>>,
    dropped: Arc<AtomicU64>,
}

/// The pipeline's end of the bus: an [`EventSink`] that never blocks.
pub struct Bus {
    stamp: Stamp,
    queues: Vec<Queue>,
}

/// The sink threads, joined after the pipeline has ended.
pub struct Workers {
    threads: Vec<(&'static str, JoinHandle<Report>)>,
}

/// Starts one thread per worker, each behind a queue of `capacity` events.
pub fn start(
    stamp: &Stamp,
    workers: Vec<Named>,
    capacity: usize,
) -> Result<(Bus, Workers), SinkError> {
    let mut queues = Vec::with_capacity(workers.len());
    let mut threads = Vec::with_capacity(workers.len());
    for (name, worker) in workers {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let sub = Subscription {
            name,
            rx,
            dropped: Arc::clone(&dropped),
            stamp: stamp.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("sink-{name}"))
            .spawn(move || worker.run(sub))
            .map_err(|error| SinkError {
                target: name.to_string(),
                error,
            })?;
        queues.push(Queue { name, tx, dropped });
        threads.push((name, handle));
    }
    Ok((
        Bus {
            stamp: stamp.clone(),
            queues,
        },
        Workers { threads },
    ))
}

impl EventSink for Bus {
    fn emit(&mut self, event: &Event) -> Result<(), SinkError> {
        if self.queues.is_empty() {
            return Ok(());
        }
        let published = Arc::new(self.stamp.publish(event.clone()));
        for q in &self.queues {
            match q.tx.try_send(Arc::clone(&published)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    // Logged by the sink with its notice; counting here
                    // keeps the analysis thread free of I/O.
                    q.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => {
                    // The sink's thread has ended (it panicked: a bug);
                    // its report says so when joined.
                    q.dropped.fetch_add(1, Ordering::Relaxed);
                    log::debug!("sink {} has stopped", q.name);
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

impl Workers {
    /// Waits for every sink thread to deliver what it holds and end (the
    /// [`Bus`] must have been dropped), at most `limit` in all: a sink
    /// blocked for good (a stdout nobody reads) is left behind and counted
    /// as having lost what it held. Returns the reports summed.
    pub fn join(self, limit: Duration) -> Report {
        let deadline = Instant::now() + limit;
        let mut total = Report::default();
        for (name, handle) in self.threads {
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !handle.is_finished() {
                log::error!("sink {name} did not finish within {limit:?}; leaving it");
                total.lost += 1;
                continue;
            }
            match handle.join() {
                Ok(r) => {
                    total.delivered += r.delivered;
                    total.lost += r.lost;
                }
                Err(_) => {
                    log::error!("sink {name} panicked");
                    total.lost += 1;
                }
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Collects lines; waits on a gate before taking each event, so tests
    /// can freeze it.
    struct Collect {
        lines: Arc<Mutex<Vec<String>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Worker for Collect {
        fn run(self: Box<Self>, events: Subscription) -> Report {
            let mut report = Report::default();
            loop {
                match events.recv_timeout(Duration::from_millis(20)) {
                    Ok(p) => {
                        let _held = self.gate.lock().unwrap();
                        if let Some((_, n)) = events.dropped_notice() {
                            self.lines.lock().unwrap().push(n.line);
                        }
                        self.lines.lock().unwrap().push(p.line.clone());
                        report.delivered += 1;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return report,
                }
            }
        }
    }

    fn event(track: u64) -> Event {
        Event::new(
            EventKind::FaceLost {
                track,
                duration: 0.0,
            },
            Duration::ZERO,
            0,
        )
    }

    fn seq_of(line: &str) -> u64 {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["seq"].as_u64().unwrap()
    }

    #[test]
    fn every_sink_gets_every_event_in_order_with_one_stamp() {
        let a = Arc::new(Mutex::new(Vec::new()));
        let b = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Mutex::new(()));
        let stamp = Stamp::with_run("r1");
        let (mut bus, workers) = start(
            &stamp,
            vec![
                (
                    "a",
                    Box::new(Collect {
                        lines: Arc::clone(&a),
                        gate: Arc::clone(&gate),
                    }),
                ),
                (
                    "b",
                    Box::new(Collect {
                        lines: Arc::clone(&b),
                        gate,
                    }),
                ),
            ],
            16,
        )
        .unwrap();
        for t in 1..=10 {
            bus.emit(&event(t)).unwrap();
        }
        drop(bus);
        let report = workers.join(Duration::from_secs(10));
        assert_eq!(report.delivered, 20);
        let a = a.lock().unwrap().clone();
        assert_eq!(a, b.lock().unwrap().clone());
        assert_eq!(
            a.iter().map(|l| seq_of(l)).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        assert!(a.iter().all(|l| l.contains(r#""run":"r1""#)));
    }

    #[test]
    fn a_frozen_sink_drops_with_a_count_and_never_blocks() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Mutex::new(()));
        let frozen = gate.lock().unwrap();
        let stamp = Stamp::with_run("r2");
        let (mut bus, workers) = start(
            &stamp,
            vec![(
                "slow",
                Box::new(Collect {
                    lines: Arc::clone(&lines),
                    gate: Arc::clone(&gate),
                }),
            )],
            4,
        )
        .unwrap();
        // The worker holds at most one event (blocked on the gate) and the
        // queue four: the rest are dropped, and emit returned at once.
        for t in 1..=100 {
            bus.emit(&event(t)).unwrap();
        }
        drop(frozen);
        drop(bus);
        let report = workers.join(Duration::from_secs(10));
        let lines = lines.lock().unwrap().clone();
        assert!(report.delivered <= 5, "{lines:?}");
        let notice: serde_json::Value = serde_json::from_str(
            lines
                .iter()
                .find(|l| l.contains("events_dropped"))
                .expect("a notice"),
        )
        .unwrap();
        assert_eq!(notice["count"].as_u64().unwrap() + report.delivered, 100);
        assert_eq!(notice["sink"], "slow");
        // The notice is stamped after the 100 events.
        assert_eq!(notice["seq"], 101);
    }

    #[test]
    fn run_ids_differ() {
        assert_ne!(Stamp::new().run(), Stamp::new().run());
        assert_eq!(Stamp::new().run().len(), 16);
    }
}
