//! JSON-lines event output to stdout or a file.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use crate::events::Event;

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

/// Something that consumes events.
pub trait EventSink {
    /// Takes one event.
    fn emit(&mut self, event: &Event) -> Result<(), SinkError>;
    /// Pushes buffered events out; called once per frame.
    fn flush(&mut self) -> Result<(), SinkError>;
}

/// Events as JSON lines on any writer.
pub struct JsonLines<W: Write> {
    out: W,
    target: String,
}

impl JsonLines<BufWriter<io::Stdout>> {
    /// Events on standard output.
    pub fn stdout() -> Self {
        JsonLines {
            out: BufWriter::new(io::stdout()),
            target: "stdout".into(),
        }
    }
}

impl JsonLines<BufWriter<File>> {
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
        Ok(JsonLines {
            out: BufWriter::new(file),
            target: path.display().to_string(),
        })
    }
}

impl<W: Write> JsonLines<W> {
    /// Events on an arbitrary writer (tests, sockets).
    pub fn new(out: W, target: impl Into<String>) -> Self {
        JsonLines {
            out,
            target: target.into(),
        }
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.out
    }

    fn err(&self, error: io::Error) -> SinkError {
        SinkError {
            target: self.target.clone(),
            error,
        }
    }
}

impl<W: Write> EventSink for JsonLines<W> {
    fn emit(&mut self, event: &Event) -> Result<(), SinkError> {
        let line = event.to_json();
        self.out
            .write_all(line.as_bytes())
            .and_then(|_| self.out.write_all(b"\n"))
            .map_err(|e| self.err(e))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;
    use std::time::Duration;

    #[test]
    fn writes_one_line_per_event() {
        let mut s = JsonLines::new(Vec::new(), "memory");
        for track in 1..=2 {
            let e = Event::new(
                EventKind::FaceLost {
                    track,
                    duration: 0.0,
                },
                Duration::ZERO,
                0,
            );
            s.emit(&e).unwrap();
        }
        let out = String::from_utf8(s.into_inner()).unwrap();
        assert_eq!(out.lines().count(), 2);
        assert!(out
            .lines()
            .all(|l| l.starts_with(r#"{"v":1,"type":"face_lost""#)));
    }

    #[test]
    fn full_disk_is_reported_with_the_target() {
        let Ok(full) = OpenOptions::new().write(true).open("/dev/full") else {
            return; // no /dev/full on this system
        };
        let mut s = JsonLines::new(full, "/dev/full");
        let e = Event::new(
            EventKind::FaceLost {
                track: 1,
                duration: 0.0,
            },
            Duration::ZERO,
            0,
        );
        let r = s.emit(&e).and_then(|_| s.flush());
        let msg = r.unwrap_err().to_string();
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
