//! A live source that survives its device going away: when the stream
//! fails with an I/O error it reports [`SourceEvent::Lost`], drops the
//! device, reopens it with a growing delay, and reports
//! [`SourceEvent::Restored`] once frames flow again. Frame time and
//! sequence numbers continue across reconnections.
//!
//! The device side is behind [`Connect`], so the state machine is tested
//! without a camera; [`super::v4l2::V4l2Source`] is this over V4L2.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{FrameSource, SourceError, SourceEvent};
use crate::frame::Frame;

/// An open device delivering frames.
pub trait Stream {
    /// The next frame; an `Io` error means the device is gone or broken.
    fn next_frame(&mut self) -> Option<Result<Frame, SourceError>>;
    /// The device's frame interval, if known.
    fn interval(&self) -> Option<Duration>;
    /// A short description for logs.
    fn describe(&self) -> String;
}

/// Opens the device.
pub trait Connect {
    /// The open device.
    type Stream: Stream;
    /// Opens and starts streaming.
    fn connect(&mut self) -> Result<Self::Stream, SourceError>;
    /// The device's name (path) for events and logs.
    fn device(&self) -> String;
}

/// The first delay between reopen attempts; it doubles up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
/// The most time between reopen attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(5);

/// A [`FrameSource`] over a device that may disappear and come back.
pub struct Reconnecting<C: Connect> {
    connector: C,
    open: Option<C::Stream>,
    first_retry: Duration,
    retry_delay: Duration,
    lost_at: Option<Instant>,
    events: VecDeque<SourceEvent>,
    /// Frame time continues across reconnections.
    offset: Duration,
    last_time: Duration,
    next_sequence: u64,
}

impl<C: Connect> Reconnecting<C> {
    /// Opens the device; the first open must succeed (a wrong device or
    /// format is a start-up error, not something to retry).
    pub fn open(mut connector: C) -> Result<Self, SourceError> {
        let stream = connector.connect()?;
        Ok(Reconnecting {
            connector,
            open: Some(stream),
            first_retry: FIRST_RETRY,
            retry_delay: FIRST_RETRY,
            lost_at: None,
            events: VecDeque::new(),
            offset: Duration::ZERO,
            last_time: Duration::ZERO,
            next_sequence: 0,
        })
    }

    /// Sets the first retry delay (tests use zero).
    pub fn with_first_retry(mut self, delay: Duration) -> Self {
        self.first_retry = delay;
        self.retry_delay = delay;
        self
    }

    /// Whether the device is open now.
    pub fn is_connected(&self) -> bool {
        self.open.is_some()
    }

    fn reopen(&mut self) -> Result<(), SourceError> {
        std::thread::sleep(self.retry_delay);
        match self.connector.connect() {
            Ok(stream) => {
                let offline = self.lost_at.take().map_or(Duration::ZERO, |t| t.elapsed());
                log::info!(
                    "{}: camera back after {:.1} s",
                    self.connector.device(),
                    offline.as_secs_f64()
                );
                self.events.push_back(SourceEvent::Restored {
                    device: self.connector.device(),
                    offline,
                });
                self.retry_delay = self.first_retry;
                // Frame time keeps running from where it stopped.
                self.offset = self.last_time;
                self.open = Some(stream);
                Ok(())
            }
            Err(e) => {
                self.retry_delay = (self.retry_delay * 2).clamp(self.first_retry, MAX_RETRY);
                Err(e)
            }
        }
    }
}

impl<C: Connect> FrameSource for Reconnecting<C> {
    fn next_frame(&mut self) -> Option<Result<Frame, SourceError>> {
        if self.open.is_none() {
            if let Err(e) = self.reopen() {
                return Some(Err(e));
            }
        }
        let open = self.open.as_mut()?;
        let item = open.next_frame()?;
        if let Err(e @ SourceError::Io { .. }) = &item {
            // The device is gone or broken: drop it (closing the fd) and
            // reopen on the next call.
            log::error!("{e}: camera lost, reconnecting");
            self.events.push_back(SourceEvent::Lost {
                device: self.connector.device(),
                error: e.to_string(),
            });
            self.lost_at = Some(Instant::now());
            self.open = None;
        }
        Some(item.map(|mut f| {
            f.timestamp += self.offset;
            self.last_time = f.timestamp;
            f.sequence = self.next_sequence;
            self.next_sequence += 1;
            f
        }))
    }

    fn frame_interval(&self) -> Option<Duration> {
        self.open.as_ref().and_then(|o| o.interval())
    }

    fn describe(&self) -> String {
        match &self.open {
            Some(o) => o.describe(),
            None => format!("camera {} (reconnecting)", self.connector.device()),
        }
    }

    fn take_event(&mut self) -> Option<SourceEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PixelFormat;
    use std::cell::RefCell;
    use std::path::PathBuf;
    use std::rc::Rc;

    /// What the fake device does on each call, shared with the test.
    #[derive(Default)]
    struct Script {
        /// Per connect attempt: succeed or fail.
        connects: VecDeque<bool>,
        /// Per frame request: a frame, or an I/O error (device gone).
        frames: VecDeque<bool>,
    }

    struct FakeCamera(Rc<RefCell<Script>>);
    struct FakeStream(Rc<RefCell<Script>>, u64);

    fn io_err() -> SourceError {
        SourceError::Io {
            path: PathBuf::from("/dev/video9"),
            error: std::io::Error::from_raw_os_error(libc::ENODEV),
        }
    }

    impl Connect for FakeCamera {
        type Stream = FakeStream;
        fn connect(&mut self) -> Result<FakeStream, SourceError> {
            match self.0.borrow_mut().connects.pop_front() {
                Some(true) => Ok(FakeStream(Rc::clone(&self.0), 0)),
                _ => Err(io_err()),
            }
        }
        fn device(&self) -> String {
            "/dev/video9".into()
        }
    }

    impl Stream for FakeStream {
        fn next_frame(&mut self) -> Option<Result<Frame, SourceError>> {
            let ok = self.0.borrow_mut().frames.pop_front()?;
            if !ok {
                return Some(Err(io_err()));
            }
            self.1 += 1;
            let mut f = Frame::new(2, 2, PixelFormat::Grey, vec![0; 4]);
            // The driver clock restarts with each open.
            f.timestamp = Duration::from_millis(100 * self.1);
            Some(Ok(f))
        }
        fn interval(&self) -> Option<Duration> {
            Some(Duration::from_millis(100))
        }
        fn describe(&self) -> String {
            "fake".into()
        }
    }

    #[test]
    fn lost_then_restored_with_continuous_time() {
        let script = Rc::new(RefCell::new(Script {
            connects: [true, false, false, true].into(),
            frames: [true, true, false, true, true].into(),
        }));
        let mut src = Reconnecting::open(FakeCamera(Rc::clone(&script)))
            .unwrap()
            .with_first_retry(Duration::ZERO);
        let mut frames = Vec::new();
        let mut errors = 0;
        let mut events = Vec::new();
        while let Some(item) = src.next_frame() {
            match item {
                Ok(f) => frames.push((f.sequence, f.timestamp.as_millis())),
                Err(_) => errors += 1,
            }
            events.extend(std::iter::from_fn(|| src.take_event()));
            if frames.len() == 4 {
                break;
            }
        }
        // Two frames, the failure, two failed reopens, two frames again.
        assert_eq!(errors, 3);
        assert_eq!(frames, vec![(0, 100), (1, 200), (2, 300), (3, 400)]);
        assert_eq!(events.len(), 2);
        assert!(
            matches!(&events[0], SourceEvent::Lost { device, error } if device == "/dev/video9" && error.contains("/dev/video9"))
        );
        assert!(
            matches!(&events[1], SourceEvent::Restored { device, .. } if device == "/dev/video9")
        );
        assert!(src.is_connected());
    }

    #[test]
    fn retry_delay_backs_off_and_resets() {
        let script = Rc::new(RefCell::new(Script {
            connects: [true, false, false, false, true].into(),
            frames: [false, true].into(),
        }));
        let mut src = Reconnecting::open(FakeCamera(Rc::clone(&script))).unwrap();
        src.first_retry = Duration::from_millis(1);
        src.retry_delay = Duration::from_millis(1);
        assert!(src.next_frame().unwrap().is_err()); // lost
        assert!(!src.is_connected());
        for expected in [2, 4, 8] {
            assert!(src.next_frame().unwrap().is_err());
            assert_eq!(src.retry_delay, Duration::from_millis(expected));
        }
        assert!(src.next_frame().unwrap().is_ok()); // reopened, frame
        assert_eq!(src.retry_delay, Duration::from_millis(1));
        assert!(matches!(src.take_event(), Some(SourceEvent::Lost { .. })));
        assert!(matches!(
            src.take_event(),
            Some(SourceEvent::Restored { .. })
        ));
        assert!(src.take_event().is_none());
    }

    #[test]
    fn first_open_failure_is_an_error() {
        let script = Rc::new(RefCell::new(Script::default()));
        assert!(Reconnecting::open(FakeCamera(script)).is_err());
    }
}
