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

/// Where event lines go: a writer that may be able to take back the bytes
/// of a line torn by a failed write (a disk that filled up in the middle of
/// it), so that the output holds whole lines only.
pub trait LineOutput: Write {
    /// Removes the last `n` bytes written. Outputs that cannot (a pipe, a
    /// terminal) return an error; the next write then starts with a newline,
    /// which ends the torn fragment so that the lines after it parse.
    fn take_back(&mut self, n: u64) -> io::Result<()> {
        let _ = n;
        Err(io::ErrorKind::Unsupported.into())
    }
}

impl LineOutput for io::Stdout {}

impl LineOutput for File {
    /// Truncates the file by `n` bytes: opened for appending, its last
    /// bytes are the ones just written.
    fn take_back(&mut self, n: u64) -> io::Result<()> {
        let len = self.metadata()?.len();
        // Shorter than what was written: someone truncated it meanwhile
        // (a rotation); cutting would take other bytes.
        let keep = len.checked_sub(n).ok_or(io::ErrorKind::InvalidData)?;
        self.set_len(keep)
    }
}

/// Events as JSON lines on any writer. Lines are gathered per batch (what
/// the queue holds) and written with one `write_all`, unbuffered otherwise,
/// so that a failed write loses exactly the batch and is counted exactly.
///
/// A write that fails (a full disk: `ENOSPC`) never stops or slows the
/// analysis, which runs on another thread behind the bus: the batch is
/// dropped and counted, a warning names the output and the error once per
/// outage, and every later batch is tried again. The first write that works
/// again is followed by an `events_dropped` line with the count, and logged
/// with it. A batch torn by the failure is taken back out of the output
/// ([`LineOutput::take_back`]), so the output holds whole lines only.
pub struct JsonLines<W: LineOutput> {
    out: W,
    target: String,
    batch: Vec<u8>,
    /// Lines in `batch`.
    lines: u64,
    /// Lines lost since the last write that worked; reported as
    /// `events_dropped` once writing works again (a full disk that got
    /// space back).
    failed: u64,
    /// Events the bus's queue dropped (this sink fell behind), not yet
    /// reported: they go into the same `events_dropped` notice, which
    /// stays pending until a write works.
    queue_dropped: u64,
    /// A torn fragment that could not be taken back ends the output: the
    /// next write starts with a newline.
    torn: bool,
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

impl<W: LineOutput> JsonLines<W> {
    /// Events on an arbitrary writer (tests, sockets).
    pub fn new(out: W, target: impl Into<String>) -> Self {
        JsonLines {
            out,
            target: target.into(),
            batch: Vec::new(),
            lines: 0,
            failed: 0,
            queue_dropped: 0,
            torn: false,
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

    /// Writes the batch (after failures, with an `events_dropped` notice at
    /// its end). A failure loses the whole batch, counted; see the type's
    /// documentation.
    fn write_batch(&mut self, events: &Subscription, report: &mut Report) {
        let notice = self.failed + self.queue_dropped > 0;
        if notice {
            let notice = events.notice(self.failed + self.queue_dropped);
            self.push(&notice.line);
        }
        // The newline that ends a torn fragment goes first.
        let newline = usize::from(self.torn);
        if self.torn {
            self.batch.insert(0, b'\n');
        }
        let mut done = 0;
        let r = write_fully(&mut self.out, &self.batch, &mut done).and_then(|()| self.out.flush());
        let lines = std::mem::take(&mut self.lines);
        self.batch.clear();
        if done >= newline {
            self.torn = false;
        }
        match r {
            Ok(()) => {
                if self.failed > 0 {
                    log::warn!(
                        "writing events to {} again, {} events dropped",
                        self.target,
                        self.failed
                    );
                    self.failed = 0;
                }
                self.queue_dropped = 0;
                report.delivered += lines;
            }
            Err(e) => {
                // A notice in the batch was not an event: not lost.
                let lost = lines - u64::from(notice);
                if self.failed == 0 {
                    log::warn!("{}; dropping events until writing works again", self.err(e));
                }
                self.failed += lost;
                report.lost += lost;
                // Part of the batch went out: a line may be torn. The whole
                // batch is lost, so all of that part comes back out.
                let part = done.saturating_sub(newline) as u64;
                if part > 0 {
                    if let Err(e) = self.out.take_back(part) {
                        log::debug!("{}: cannot take back a torn line: {e}", self.target);
                        self.torn = true;
                    }
                }
            }
        }
    }
}

/// `write_all` that counts in `done` the bytes written before an error (a
/// line torn by a full disk).
fn write_fully<W: Write>(out: &mut W, buf: &[u8], done: &mut usize) -> io::Result<()> {
    while *done < buf.len() {
        match out.write(&buf[*done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl<W: LineOutput + Send> Worker for JsonLines<W> {
    fn run(mut self: Box<Self>, events: Subscription) -> Report {
        let mut report = Report::default();
        loop {
            match events.recv_timeout(Duration::from_millis(500)) {
                Ok(p) => {
                    let count = events.take_dropped();
                    report.lost += count;
                    self.queue_dropped += count;
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
    use std::sync::{Arc, Mutex};

    /// A disk that can be filled and emptied while the sink runs: `room`
    /// bytes fit (a write larger than that is partial, as on a real disk
    /// that fills up; then `ENOSPC`); `None` is unlimited. As a pipe it
    /// cannot take bytes back.
    #[derive(Clone, Default)]
    struct Disk {
        data: Arc<Mutex<Vec<u8>>>,
        room: Arc<Mutex<Option<usize>>>,
        pipe: bool,
    }

    impl Disk {
        fn fill(&self, room: usize) {
            *self.room.lock().unwrap() = Some(room);
        }
        fn empty(&self) {
            *self.room.lock().unwrap() = None;
        }
        fn text(&self) -> String {
            String::from_utf8(self.data.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut room = self.room.lock().unwrap();
            let n = match *room {
                None => buf.len(),
                Some(0) => return Err(io::Error::from_raw_os_error(libc::ENOSPC)),
                Some(r) => r.min(buf.len()),
            };
            if let Some(r) = room.as_mut() {
                *r -= n;
            }
            self.data.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl LineOutput for Disk {
        fn take_back(&mut self, n: u64) -> io::Result<()> {
            if self.pipe {
                return Err(io::ErrorKind::Unsupported.into());
            }
            let mut data = self.data.lock().unwrap();
            let keep = data.len() - n as usize;
            data.truncate(keep);
            if let Some(r) = self.room.lock().unwrap().as_mut() {
                *r += n as usize;
            }
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
        disk.fill(0);
        for track in 2..=4 {
            bus.emit(&lost(track)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        disk.empty();
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

    /// Sends events `tracks` to the sink as one batch, as its thread does
    /// with what the queue holds.
    fn batch(
        s: &mut JsonLines<Disk>,
        events: &Subscription,
        report: &mut Report,
        tracks: std::ops::RangeInclusive<u64>,
    ) {
        for track in tracks {
            s.push(&events.stamp().publish(lost(track)).line);
        }
        s.write_batch(events, report);
    }

    #[test]
    fn a_line_torn_by_a_full_disk_is_taken_back_and_writing_resumes() {
        let disk = Disk::default();
        let events = Subscription::detached("output", &Stamp::with_run("t"));
        let mut s = JsonLines::new(disk.clone(), "/var/log/ferd/events.jsonl");
        let mut report = Report::default();
        batch(&mut s, &events, &mut report, 1..=2);
        let before = disk.text();
        // Room for less than one line: the next batch is torn in its first
        // line, and the one after that finds no room at all.
        disk.fill(30);
        batch(&mut s, &events, &mut report, 3..=4);
        assert_eq!(disk.text(), before, "the torn part was not taken back");
        batch(&mut s, &events, &mut report, 5..=5);
        assert_eq!(disk.text(), before);
        assert_eq!(s.failed, 3);
        disk.empty();
        batch(&mut s, &events, &mut report, 6..=6);
        let out = lines(&disk);
        let summary: Vec<_> = out
            .iter()
            .map(|l| {
                (
                    l["type"].as_str().unwrap(),
                    l["track"].as_u64(),
                    l["count"].as_u64(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("face_lost", Some(1), None),
                ("face_lost", Some(2), None),
                ("face_lost", Some(6), None),
                ("events_dropped", None, Some(3)),
            ]
        );
        // Delivered: tracks 1, 2 and 6 and the notice.
        assert_eq!(
            report,
            Report {
                delivered: 4,
                lost: 3
            }
        );
        assert_eq!(s.failed, 0);
    }

    #[test]
    fn on_a_pipe_a_torn_line_is_ended_before_the_next_one() {
        let disk = Disk {
            pipe: true,
            ..Disk::default()
        };
        let events = Subscription::detached("output", &Stamp::with_run("t"));
        let mut s = JsonLines::new(disk.clone(), "stdout");
        let mut report = Report::default();
        batch(&mut s, &events, &mut report, 1..=1);
        disk.fill(30);
        batch(&mut s, &events, &mut report, 2..=2);
        // Nothing at all goes out of this one: the fragment must still be
        // ended before the next line.
        batch(&mut s, &events, &mut report, 3..=3);
        disk.empty();
        batch(&mut s, &events, &mut report, 4..=4);
        let text = disk.text();
        let all: Vec<&str> = text.lines().collect();
        assert_eq!(all.len(), 4, "{text}");
        assert_eq!(all[1].len(), 30, "the fragment of track 2: {text}");
        assert!(serde_json::from_str::<serde_json::Value>(all[1]).is_err());
        let whole: Vec<serde_json::Value> = [all[0], all[2], all[3]]
            .iter()
            .map(|l| serde_json::from_str(l).expect(l))
            .collect();
        assert_eq!(whole[0]["track"], 1);
        assert_eq!(whole[1]["track"], 4);
        assert_eq!(whole[2]["type"], "events_dropped");
        assert_eq!(whole[2]["count"], 2);
        // Delivered: tracks 1 and 4 and the notice.
        assert_eq!(
            report,
            Report {
                delivered: 3,
                lost: 2
            }
        );
    }

    #[test]
    fn queue_drops_are_reported_once_writing_works_with_the_write_failures() {
        let disk = Disk::default();
        let events = Subscription::detached("output", &Stamp::with_run("t"));
        let mut s = JsonLines::new(disk.clone(), "/var/log/ferd/events.jsonl");
        let mut report = Report::default();
        // The queue dropped 5 (counted in the report by the thread) while
        // the disk was full: the notice is lost with its batch, its count
        // is not.
        s.queue_dropped = 5;
        disk.fill(0);
        batch(&mut s, &events, &mut report, 1..=1);
        disk.empty();
        batch(&mut s, &events, &mut report, 2..=2);
        let out = lines(&disk);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0]["track"], 2);
        assert_eq!(out[1]["type"], "events_dropped");
        assert_eq!(out[1]["count"], 6);
        assert_eq!((s.failed, s.queue_dropped), (0, 0));
        // Nothing pending: the next batch has no notice.
        batch(&mut s, &events, &mut report, 3..=3);
        assert_eq!(lines(&disk).len(), 3);
    }

    #[test]
    fn a_file_takes_back_its_last_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"a\":1}\n{\"b\"").unwrap();
        f.take_back(4).unwrap();
        f.write_all(b"{\"c\":3}\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"c\":3}\n"
        );
        // More than the file holds (it was truncated meanwhile): refused.
        assert!(f.take_back(100).is_err());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 16);
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
