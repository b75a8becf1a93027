//! The event-sink seam, and JSON-lines event output to stdout or a file
//! (a [`Worker`] on its own thread behind the [`bus`](super::bus)).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use crate::events::Event;
use crate::sink::bus::{Report, Subscription, Worker};

/// Why an event could not be written; names the destination.
///
/// The I/O error's text is part of the message (callers log it with
/// `{e}`), so it is deliberately not also the error's `source()`: chains
/// printed with anyhow's `{:#}` would repeat it. Hence the field is not
/// named `source`, which thiserror would make the source.
#[derive(Debug, thiserror::Error)]
#[error("cannot write events to {target}: {error}")]
pub struct SinkError {
    /// `stdout` or the file path.
    pub target: String,
    /// The I/O error (a full disk shows up here).
    pub error: io::Error,
}

/// Something that consumes events on the analysis thread: the bus, and
/// GPIO. Neither may block.
pub trait EventSink {
    /// Takes one event.
    fn emit(&mut self, event: &Event) -> Result<(), SinkError>;
    /// Pushes buffered events out; called once per frame.
    fn flush(&mut self) -> Result<(), SinkError>;
}

/// Events as JSON lines on any writer. Lines are gathered per batch (what
/// the queue holds) and written with one `write_all`, unbuffered otherwise,
/// so that a failed write loses exactly the batch and is counted exactly.
pub struct JsonLines<W: Write> {
    out: W,
    target: String,
    batch: Vec<u8>,
    /// Lines in `batch`.
    lines: u64,
    /// Lines lost since the last write that worked; reported as
    /// `events_dropped` once writing works again (a full disk that got
    /// space back).
    failed: u64,
}

impl JsonLines<io::Stdout> {
    /// Events on standard output.
    pub fn stdout() -> Self {
        JsonLines::new(io::stdout(), "stdout")
    }
}

impl JsonLines<File> {
    /// Events appended to a file, created if missing.
    pub fn append(path: PathBuf) -> Result<Self, SinkError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|error| SinkError {
                target: path.display().to_string(),
                error,
            })?;
        Ok(JsonLines::new(file, path.display().to_string()))
    }
}

impl<W: Write> JsonLines<W> {
    /// Events on an arbitrary writer (tests, sockets).
    pub fn new(out: W, target: impl Into<String>) -> Self {
        JsonLines {
            out,
            target: target.into(),
            batch: Vec::new(),
            lines: 0,
            failed: 0,
        }
    }

    fn err(&self, error: io::Error) -> SinkError {
        SinkError {
            target: self.target.clone(),
            error,
        }
    }

    fn push(&mut self, line: &str) {
        self.batch.extend_from_slice(line.as_bytes());
        self.batch.push(b'\n');
        self.lines += 1;
    }

    /// Writes the batch. A failure loses it, counted, and is logged on the
    /// first and every 1000th lost line, so a full disk does not flood the
    /// journal. After failures, a write that works is followed by an
    /// `events_dropped` line with their count.
    fn write_batch(&mut self, events: &Subscription, report: &mut Report) {
        if self.failed > 0 {
            let notice = events.notice(self.failed);
            self.push(&notice.line);
        }
        let r = write_fully(&mut self.out, &self.batch)
            .and_then(|()| self.out.flush().map_err(|e| (e, false)));
        let lines = std::mem::take(&mut self.lines);
        self.batch.clear();
        match r {
            Ok(()) => {
                if self.failed > 0 {
                    log::info!("writing events to {} again", self.target);
                    self.failed = 0;
                }
                report.delivered += lines;
            }
            Err((e, torn)) => {
                // A notice in the batch was not an event: not lost.
                let lost = lines - u64::from(self.failed > 0);
                if self.failed == 0 || (self.failed + lost) / 1000 > self.failed / 1000 {
                    log::error!(
                        "{} ({} events lost so far)",
                        self.err(e),
                        self.failed + lost
                    );
                }
                self.failed += lost;
                report.lost += lost;
                if torn {
                    // End the partial line, so the next line parses.
                    self.batch.push(b'\n');
                }
            }
        }
    }
}

/// `write_all` that says whether part of `buf` was written before an
/// error (a line torn by a full disk).
fn write_fully<W: Write>(out: &mut W, buf: &[u8]) -> Result<(), (io::Error, bool)> {
    let mut done = 0;
    while done < buf.len() {
        match out.write(&buf[done..]) {
            Ok(0) => return Err((io::ErrorKind::WriteZero.into(), done > 0)),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((e, done > 0)),
        }
    }
    Ok(())
}

impl<W: Write + Send> Worker for JsonLines<W> {
    fn run(mut self: Box<Self>, events: Subscription) -> Report {
        let mut report = Report::default();
        loop {
            match events.recv_timeout(Duration::from_millis(500)) {
                Ok(p) => {
                    if let Some((count, n)) = events.dropped_notice() {
                        report.lost += count;
                        self.push(&n.line);
                    }
                    self.push(&p.line);
                    // What is already queued goes in the same write.
                    while let Some(p) = events.try_recv() {
                        self.push(&p.line);
                    }
                    self.write_batch(&events, &mut report);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return report,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;
    use crate::sink::bus::{self, Stamp};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    /// A disk that can be filled and emptied while the sink runs.
    #[derive(Clone, Default)]
    struct Disk {
        data: Arc<Mutex<Vec<u8>>>,
        full: Arc<AtomicBool>,
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.full.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.data.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn lost(track: u64) -> Event {
        Event::new(
            EventKind::FaceLost {
                track,
                duration: 0.0,
            },
            Duration::ZERO,
            0,
        )
    }

    fn lines(disk: &Disk) -> Vec<serde_json::Value> {
        String::from_utf8(disk.data.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn writes_one_line_per_event_on_its_own_thread() {
        let disk = Disk::default();
        let (mut bus, workers) = bus::start(
            &Stamp::with_run("t"),
            vec![("output", Box::new(JsonLines::new(disk.clone(), "memory")))],
            8,
        )
        .unwrap();
        for track in 1..=2 {
            bus.emit(&lost(track)).unwrap();
        }
        drop(bus);
        let report = workers.join(Duration::from_secs(10));
        assert_eq!(
            report,
            Report {
                delivered: 2,
                lost: 0
            }
        );
        let out = lines(&disk);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|l| l["type"] == "face_lost" && l["v"] == 1));
        assert_eq!(out[1]["seq"], 2);
    }

    #[test]
    fn a_full_disk_loses_events_with_a_count_and_writing_resumes() {
        let disk = Disk::default();
        let (mut bus, workers) = bus::start(
            &Stamp::with_run("t"),
            vec![(
                "output",
                Box::new(JsonLines::new(disk.clone(), "/var/log/ferd")),
            )],
            64,
        )
        .unwrap();
        let settle = |n: usize| {
            // Waits until the sink has taken what was sent.
            for _ in 0..500 {
                std::thread::sleep(Duration::from_millis(10));
                if lines(&disk).len() >= n {
                    break;
                }
            }
        };
        bus.emit(&lost(1)).unwrap();
        settle(1);
        disk.full.store(true, Ordering::SeqCst);
        for track in 2..=4 {
            bus.emit(&lost(track)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        disk.full.store(false, Ordering::SeqCst);
        bus.emit(&lost(5)).unwrap();
        drop(bus);
        let report = workers.join(Duration::from_secs(10));
        let out = lines(&disk);
        let types: Vec<_> = out.iter().map(|l| l["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            ["face_lost", "face_lost", "events_dropped"],
            "{out:?}"
        );
        assert_eq!(out[1]["track"], 5);
        assert_eq!(out[2]["count"], 3);
        assert_eq!(out[2]["sink"], "output");
        assert_eq!(
            report,
            Report {
                delivered: 3,
                lost: 3
            }
        );
    }

    #[test]
    fn dev_full_is_reported_with_the_target() {
        let Ok(full) = OpenOptions::new().write(true).open("/dev/full") else {
            return; // no /dev/full on this system
        };
        let mut s = JsonLines::new(full, "/dev/full");
        let e = s.out.write_all(b"{}\n").unwrap_err();
        let msg = s.err(e).to_string();
        assert!(msg.contains("/dev/full"), "{msg}");
    }

    #[test]
    fn a_chain_names_the_os_error_once() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir/events.jsonl");
        let Err(e) = JsonLines::append(missing) else {
            panic!("opened a file in a missing folder");
        };
        let chain = format!(
            "{:#}",
            anyhow::Error::new(e).context("cannot start the event output")
        );
        // ENOENT's text, "No such file or directory (os error 2)", once.
        assert_eq!(chain.matches("(os error 2)").count(), 1, "{chain}");
        assert!(chain.contains("no-such-dir/events.jsonl"), "{chain}");
    }
}
