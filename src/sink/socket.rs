//! The local event socket (`[events] socket`): subscribers on the same
//! machine (a kiosk UI) connect to a Unix stream socket and read the
//! JSON-lines event stream, one [`Published::line`] and a newline per
//! event, from the moment they connect on.
//!
//! One thread ([`SocketSink`] as a bus [`Worker`]) accepts clients and
//! writes to them. Nothing it does blocks: the listener and every client
//! are non-blocking, and each client has its own queue of bytes the kernel
//! would not take yet. A client that lets that queue grow past
//! [`MAX_PENDING`] is slow and is disconnected, so that one stalled
//! subscriber can neither hold the thread (and with it every other client
//! and the bus queue) nor grow the daemon's memory. A dropped subscriber
//! reconnects; the `seq` of the lines tells it what it missed.
//!
//! The protocol is one-way: what clients send is read and discarded.

use std::collections::VecDeque;
use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sink::bus::{Published, Report, Subscription, Worker};

/// Subscribers connected at once. A kiosk needs one or two; the bound keeps
/// a client that reconnects in a loop without closing from exhausting file
/// descriptors. Further clients are accepted and closed at once, so that
/// they see end-of-file instead of hanging in the listen backlog.
pub const MAX_CLIENTS: usize = 16;

/// Bytes a client may leave unread in ferd (beyond what the kernel's
/// socket buffer holds, about 200 KiB more on Linux) before it is
/// disconnected as slow: several minutes of a busy scene, so a reader that
/// pauses for a moment loses nothing, while 16 stalled clients cost at most
/// 4 MiB.
pub const MAX_PENDING: usize = 256 * 1024;

/// The socket file's mode: the daemon's user and group read and write (a
/// connect needs write permission); others nothing.
pub const SOCKET_MODE: u32 = 0o660;

/// The longest the thread waits for an event before it looks at the
/// listener and its clients again, so that new clients are accepted (and
/// extra ones refused) and closed ones reaped while no events come.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// The wait while some client has bytes pending: the kernel takes more as
/// the client reads, and nothing else would wake the thread to offer them.
const PENDING_POLL: Duration = Duration::from_millis(10);

/// Bytes of lines gathered into one write before it goes out. A queue full
/// of events after a stall is sent in pieces well under [`MAX_PENDING`], so
/// that a burst alone never makes a reading client look slow, and so that
/// accepting and reaping go on between the pieces.
const MAX_BATCH: usize = 64 * 1024;

/// Bytes read (and discarded) from one client per wake: enough to drain
/// what a well-behaved client sends (nothing), bounded so that a client
/// that floods the socket cannot keep the thread reading. The rest waits in
/// the kernel, whose buffer then throttles the client.
const MAX_DISCARD: usize = 64 * 1024;

/// How long the thread still offers pending bytes to clients once the
/// pipeline has ended, so that a reading client gets the last events (the
/// `status` line, cleared alerts) before the connection closes.
const FINAL_FLUSH: Duration = Duration::from_millis(500);

/// Why the event socket could not be set up; names the path or the group.
///
/// As with [`SinkError`](super::events::SinkError), the I/O error's text is
/// part of the message and deliberately not the error's `source()` (the
/// field is not named `source`), so that a chain printed with anyhow's
/// `{:#}` names it once.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A system call on the socket path failed.
    #[error("cannot {action} event socket {}: {error}", path.display())]
    Io {
        /// What was being done: `bind`, `set the mode of`, ...
        action: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        error: io::Error,
    },
    /// Something other than a socket is at the path; ferd does not delete
    /// it (a mistyped path must not cost a file).
    #[error("refusing to replace {}: it exists and is not a socket", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A process (another ferd) accepts connections on the socket already.
    #[error("event socket {} is in use by another process", path.display())]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// The group to give the socket to does not exist.
    #[error("unknown group {group:?} for event socket {}", path.display())]
    UnknownGroup {
        /// The group name.
        group: String,
        /// The socket path.
        path: PathBuf,
    },
    /// The group database could not be read.
    #[error("cannot look up group {group:?} for event socket {}: {error}", path.display())]
    GroupLookup {
        /// The group name.
        group: String,
        /// The socket path.
        path: PathBuf,
        /// The error `getgrnam_r` returned.
        error: io::Error,
    },
}

/// The event socket's listener: a bus [`Worker`] that serves the event
/// stream to local subscribers. The socket file is removed when it ends
/// (when the sink is dropped, whether or not it ran).
#[derive(Debug)]
pub struct SocketSink {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file it bound, so that it removes
    /// only its own file, never one that replaced it.
    file: (u64, u64),
}

impl SocketSink {
    /// Binds the socket at `path` with mode [`SOCKET_MODE`], owned by
    /// `group` if given.
    ///
    /// A socket file left by a previous run (nothing accepts on it) is
    /// replaced. Anything else at the path, a socket in use by another
    /// process included, is an error.
    pub fn bind(path: &Path, group: Option<&str>) -> Result<SocketSink, SocketError> {
        let io_err = |action, error| SocketError::Io {
            action,
            path: path.to_path_buf(),
            error,
        };
        // Before anything touches the path, so that a mistyped group leaves
        // no socket file behind.
        let gid = group.map(|g| group_id(g, path)).transpose()?;
        remove_stale(path)?;
        let listener = UnixListener::bind(path).map_err(|e| io_err("bind", e))?;
        let meta = std::fs::symlink_metadata(path).map_err(|e| io_err("inspect", e))?;
        // From here on the sink's Drop removes the file if a step fails.
        let sink = SocketSink {
            listener,
            path: path.to_path_buf(),
            file: (meta.dev(), meta.ino()),
        };
        // bind(2) creates the file with 0777 less the umask: too open under
        // umask 0, too closed for the group under systemd's UMask=0077. So
        // the mode is set explicitly afterwards. The umask is not changed
        // around bind instead: it is process-wide, and other threads create
        // files. Until the chmod the file has at most the umask's mode,
        // which under the usual 022 lets only the owner connect (connecting
        // needs write permission). fchmod on the listening descriptor would
        // not do: on Linux it does not reach the file in the filesystem.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(|e| io_err("set the mode of", e))?;
        if let Some(gid) = gid {
            // lchown: the path is the socket just bound; should it have been
            // swapped for a symlink meanwhile, the link is changed, never
            // what it points to.
            std::os::unix::fs::lchown(path, None, Some(gid))
                .map_err(|e| io_err("change the group of", e))?;
        }
        // Accepting must never wait: the thread only accepts when it wakes,
        // and a client that gave up between connect and accept must not
        // hold it.
        sink.listener
            .set_nonblocking(true)
            .map_err(|e| io_err("configure", e))?;
        Ok(sink)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketSink {
    fn drop(&mut self) {
        // Only the file this sink bound: if another process has replaced
        // it since (a second ferd started by hand), that one is left alone.
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.file => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    log::warn!("cannot remove event socket {}: {e}", self.path.display());
                }
            }
            Ok(_) => log::debug!(
                "event socket {} was replaced; leaving it",
                self.path.display()
            ),
            Err(_) => {}
        }
    }
}

/// Removes a socket file nobody accepts on (left by a run that was
/// killed); refuses anything else.
fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(SocketError::Io {
                action: "inspect",
                path: path.to_path_buf(),
                error,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    // A live socket accepts the connection (it is queued in its backlog
    // even if nobody calls accept); a stale one refuses it. Any other
    // answer (no permission to connect: not our socket) is not stale.
    match UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => std::fs::remove_file(path)
            .or_else(|error| match error.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(SocketError::Io {
                    action: "remove the stale",
                    path: path.to_path_buf(),
                    error,
                }),
            }),
        Err(error) => Err(SocketError::Io {
            action: "check the existing",
            path: path.to_path_buf(),
            error,
        }),
    }
}

/// The id of group `name`, through NSS (`getgrnam_r`), so that groups
/// from LDAP or systemd-userdb work as they do for chgrp.
fn group_id(name: &str, path: &Path) -> Result<libc::gid_t, SocketError> {
    let unknown = || SocketError::UnknownGroup {
        group: name.to_string(),
        path: path.to_path_buf(),
    };
    let cname = CString::new(name).map_err(|_| unknown())?;
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: `group` is plain data that getgrnam_r fills in; its
        // pointers point into `buf`, which outlives every use (only
        // `gr_gid`, a number, is read); `result` is set to `&mut group` or
        // null; the name is NUL-terminated.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut group,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        match rc {
            0 if result.is_null() => return Err(unknown()),
            0 => return Ok(group.gr_gid),
            // Some NSS modules say "not found" this way (getgrnam_r(3)).
            libc::ENOENT | libc::ESRCH => return Err(unknown()),
            // A group with many members: retry with more room.
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            libc::EINTR => {}
            _ => {
                return Err(SocketError::GroupLookup {
                    group: name.to_string(),
                    path: path.to_path_buf(),
                    error: io::Error::from_raw_os_error(rc),
                })
            }
        }
    }
}

/// One subscriber.
struct Client {
    stream: UnixStream,
    /// Batches not yet taken by the kernel, shared between clients; the
    /// first from `offset` on.
    pending: VecDeque<Arc<[u8]>>,
    offset: usize,
    /// Bytes in `pending` from `offset` on.
    pending_bytes: usize,
    /// The client has shut down its sending side (`ncat` does at the end
    /// of its input) but may still read: it stays, and is not read from.
    read_closed: bool,
}

/// What became of a client after an operation.
enum State {
    Open,
    /// Closed by the peer: removed quietly.
    Gone,
}

impl Client {
    fn new(stream: UnixStream) -> Client {
        Client {
            stream,
            pending: VecDeque::new(),
            offset: 0,
            pending_bytes: 0,
            read_closed: false,
        }
    }

    fn queue(&mut self, batch: &Arc<[u8]>) {
        self.pending_bytes += batch.len();
        self.pending.push_back(Arc::clone(batch));
    }

    /// Offers pending bytes to the kernel until it takes no more.
    fn flush(&mut self) -> State {
        while let Some(front) = self.pending.front() {
            match send(&self.stream, &front[self.offset..]) {
                Ok(n) => {
                    self.offset += n;
                    self.pending_bytes -= n;
                    if self.offset == front.len() {
                        self.pending.pop_front();
                        self.offset = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return gone(&e, "write to"),
            }
        }
        State::Open
    }

    /// Reads and discards what the client sent, at most [`MAX_DISCARD`].
    fn discard_input(&mut self) -> State {
        let mut scratch = [0u8; 4096];
        let mut read = 0;
        while !self.read_closed && read < MAX_DISCARD {
            // SAFETY: `scratch` is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.stream.as_raw_fd(),
                    scratch.as_mut_ptr().cast(),
                    scratch.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            match n {
                0 => self.read_closed = true,
                n if n > 0 => read += n.unsigned_abs(),
                _ => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::Interrupted => {}
                        io::ErrorKind::WouldBlock => break,
                        _ => return gone(&e, "read from"),
                    }
                }
            }
        }
        State::Open
    }
}

/// A client whose connection failed: closed by its end (quietly), or
/// something unexpected (logged).
fn gone(e: &io::Error, what: &str) -> State {
    let quiet = matches!(
        e.raw_os_error(),
        Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN)
    );
    if !quiet {
        log::warn!("cannot {what} an event socket client, closing it: {e}");
    }
    State::Gone
}

/// `send(2)` with `MSG_NOSIGNAL`, so that a client that has closed gives
/// EPIPE and never SIGPIPE, whatever the process's SIGPIPE disposition:
/// Rust's runtime ignores SIGPIPE in its binaries, but that is a property
/// of the `main` that links this library, not of the library, and a CLI
/// may well restore the default (so that `ferd … | head` ends quietly).
/// `MSG_DONTWAIT` makes the write non-blocking whatever the descriptor's
/// flags.
fn send(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n.unsigned_abs())
    }
}

/// The clients and what happened to them.
#[derive(Default)]
struct Clients {
    list: Vec<Client>,
    /// Clients refused because [`MAX_CLIENTS`] were connected, in all.
    refused: u64,
    /// Clients disconnected as slow, in all.
    slow: u64,
}

impl Clients {
    /// Drops clients that have closed (poll's POLLHUP: both directions
    /// shut, unlike a client that only stopped sending) or failed, and
    /// discards what the others sent. Done on every wake so that a closed
    /// client frees its slot while no events come.
    fn reap(&mut self) {
        if self.list.is_empty() {
            return;
        }
        let mut fds: Vec<libc::pollfd> = self
            .list
            .iter()
            .map(|c| libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events: if c.read_closed { 0 } else { libc::POLLIN },
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is valid for its length; timeout 0: no wait.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        if n <= 0 {
            // Nothing to do, or EINTR/ENOMEM: the next wake tries again.
            return;
        }
        let mut i = 0;
        self.list.retain_mut(|c| {
            let revents = fds[i].revents;
            i += 1;
            if revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                return false;
            }
            revents & libc::POLLIN == 0 || matches!(c.discard_input(), State::Open)
        });
    }

    /// Accepts every waiting connection, closing those beyond
    /// [`MAX_CLIENTS`] at once.
    fn accept(&mut self, listener: &UnixListener) {
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if self.list.len() >= MAX_CLIENTS {
                        // Clients may have closed since this wake's reap:
                        // their slots are free for this one.
                        self.reap();
                    }
                    if self.list.len() >= MAX_CLIENTS {
                        // Dropped here: the client reads end-of-file.
                        self.refused += 1;
                        if self.refused == 1 || self.refused % 100 == 0 {
                            log::warn!(
                                "event socket: {MAX_CLIENTS} clients connected already; \
                                 closed a new one ({} refused so far)",
                                self.refused
                            );
                        }
                        continue;
                    }
                    // Reads are done with MSG_DONTWAIT and writes with
                    // send's flags; non-blocking as well in case anything
                    // else ever touches the stream.
                    if let Err(e) = stream.set_nonblocking(true) {
                        log::warn!("event socket: cannot configure a new client: {e}");
                        continue;
                    }
                    log::debug!("event socket: client connected");
                    self.list.push(Client::new(stream));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ECONNABORTED (the client gave up), EMFILE and the like:
                // this connection is lost, the next wake tries again.
                Err(e) => {
                    log::warn!("event socket: cannot accept a client: {e}");
                    return;
                }
            }
        }
    }

    /// Queues `batch` for every client and offers it.
    fn send(&mut self, batch: &Arc<[u8]>) {
        for c in &mut self.list {
            c.queue(batch);
        }
        self.flush();
    }

    /// Offers pending bytes to every client; drops those that closed and
    /// those left with more than [`MAX_PENDING`].
    fn flush(&mut self) {
        let mut slow = 0;
        self.list.retain_mut(|c| match c.flush() {
            State::Gone => false,
            State::Open if c.pending_bytes > MAX_PENDING => {
                slow += 1;
                false
            }
            State::Open => true,
        });
        if slow > 0 {
            self.slow += slow;
            log::warn!(
                "event socket: disconnected {slow} slow client(s) with more than \
                 {MAX_PENDING} bytes unread ({} in all)",
                self.slow
            );
        }
    }

    fn pending(&self) -> bool {
        self.list.iter().any(|c| c.pending_bytes > 0)
    }
}

impl Worker for SocketSink {
    fn run(self: Box<Self>, events: Subscription) -> Report {
        let mut report = Report::default();
        let mut clients = Clients::default();
        let mut batch: Vec<u8> = Vec::new();
        loop {
            let wait = if clients.pending() {
                PENDING_POLL
            } else {
                IDLE_POLL
            };
            let first = match events.recv_timeout(wait) {
                Ok(p) => Some(p),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // Reap before accepting, so that slots freed by clients that
            // closed are available to new ones; accept before sending, so
            // that a client whose connect returned before an event was
            // emitted receives that event.
            clients.reap();
            clients.accept(&self.listener);
            let Some(first) = first else {
                clients.flush();
                continue;
            };
            if let Some((count, n)) = events.dropped_notice() {
                report.lost += count;
                push(&mut batch, &n);
            }
            push(&mut batch, &first);
            report.delivered += 1;
            // What is already queued goes in the same write, up to a bound.
            while batch.len() < MAX_BATCH {
                let Some(p) = events.try_recv() else { break };
                push(&mut batch, &p);
                report.delivered += 1;
            }
            // An event with no subscriber is delivered all the same: the
            // socket streams what happens while someone listens.
            if !clients.list.is_empty() {
                clients.send(&Arc::from(batch.as_slice()));
            }
            batch.clear();
        }
        // The pipeline has ended: stop accepting (and remove the socket
        // file) at once, then give readers the rest for a short while.
        drop(self);
        let deadline = Instant::now() + FINAL_FLUSH;
        while clients.pending() && Instant::now() < deadline {
            std::thread::sleep(PENDING_POLL);
            clients.reap();
            clients.flush();
        }
        report
    }
}

fn push(batch: &mut Vec<u8>, p: &Published) {
    batch.extend_from_slice(p.line.as_bytes());
    batch.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, EventKind};
    use crate::sink::bus::{self, Stamp};
    use crate::sink::EventSink;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Generous: the tests wait on conditions, never for fixed times.
    const PATIENCE: Duration = Duration::from_secs(10);

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

    /// An event whose line is about `len` bytes.
    fn long(len: usize) -> Event {
        Event::new(
            EventKind::CameraLost {
                device: "/dev/video0".into(),
                error: "x".repeat(len),
            },
            Duration::ZERO,
            0,
        )
    }

    fn start(sink: SocketSink, capacity: usize) -> (bus::Bus, bus::Workers) {
        bus::start(
            &Stamp::with_run("t"),
            vec![("socket", Box::new(sink))],
            capacity,
        )
        .unwrap()
    }

    fn connect(path: &Path) -> BufReader<UnixStream> {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        BufReader::new(s)
    }

    fn read_line(r: &mut BufReader<UnixStream>) -> serde_json::Value {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.ends_with('\n'), "{line:?}");
        serde_json::from_str(&line).unwrap()
    }

    /// Reads until end-of-file (or fails after [`PATIENCE`]).
    fn read_to_eof(r: &mut BufReader<UnixStream>) -> Vec<u8> {
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        rest
    }

    #[test]
    fn two_clients_receive_the_same_lines_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sock");
        let (mut bus, workers) = start(SocketSink::bind(&path, None).unwrap(), 64);
        let mut a = connect(&path);
        let mut b = connect(&path);
        for track in 1..=20 {
            bus.emit(&lost(track)).unwrap();
        }
        for c in [&mut a, &mut b] {
            for seq in 1..=20 {
                let v = read_line(c);
                assert_eq!(v["seq"], seq);
                assert_eq!(v["track"], seq);
                assert_eq!(v["run"], "t");
            }
        }
        drop(bus);
        let report = workers.join(PATIENCE);
        assert_eq!(
            report,
            Report {
                delivered: 20,
                lost: 0
            }
        );
        // Closed at the end, nothing more sent.
        assert!(read_to_eof(&mut a).is_empty());
        assert!(read_to_eof(&mut b).is_empty());
    }

    #[test]
    fn the_socket_has_mode_0660() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sock");
        let _sink = SocketSink::bind(&path, None).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o7777, 0o660);
    }

    #[test]
    fn a_client_that_never_reads_is_dropped_and_others_get_everything() {
        const EVENTS: u64 = 5000;
        const STEP: u64 = 50;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sock");
        let (mut bus, workers) = start(SocketSink::bind(&path, None).unwrap(), 256);
        let mut stalled = connect(&path);
        let reader = connect(&path);
        let received = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&received);
        let reading = std::thread::spawn(move || {
            let mut reader = reader;
            let mut seqs = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 {
                    return seqs;
                }
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                assert_eq!(v["type"], "camera_lost");
                seqs.push(v["seq"].as_u64().unwrap());
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        // ~5 MB in all, far beyond MAX_PENDING and the kernel's buffer.
        // Emitted in steps that the reader keeps up with, so that only the
        // stalled client can be slow; the time spent in emit is measured.
        let mut emitting = Duration::ZERO;
        for step in 0..EVENTS / STEP {
            let t = Instant::now();
            for _ in 0..STEP {
                bus.emit(&long(1000)).unwrap();
            }
            emitting += t.elapsed();
            let want = usize::try_from((step + 1) * STEP).unwrap();
            let deadline = Instant::now() + PATIENCE;
            while received.load(Ordering::SeqCst) < want {
                assert!(Instant::now() < deadline, "the reader fell behind");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert!(
            emitting < Duration::from_secs(2),
            "emit blocked: {emitting:?}"
        );
        // The stalled client was disconnected: what it has is followed by
        // end-of-file while the daemon still runs.
        let got = read_to_eof(&mut stalled);
        assert!(got.len() < 2_500_000, "{}", got.len());
        drop(bus);
        let report = workers.join(PATIENCE);
        assert_eq!(
            report,
            Report {
                delivered: EVENTS,
                lost: 0
            }
        );
        let seqs = reading.join().unwrap();
        assert_eq!(seqs, (1..=EVENTS).collect::<Vec<_>>());
    }

    #[test]
    fn clients_beyond_the_bound_are_closed_and_closed_ones_free_their_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sock");
        let (mut bus, workers) = start(SocketSink::bind(&path, None).unwrap(), 64);
        let gone: Vec<_> = (0..MAX_CLIENTS).map(|_| connect(&path)).collect();
        bus.emit(&lost(1)).unwrap();
        let mut extra = connect(&path);
        // Refused without waiting for an event.
        assert!(read_to_eof(&mut extra).is_empty());
        drop(gone);
        let mut clients: Vec<_> = (0..MAX_CLIENTS).map(|_| connect(&path)).collect();
        bus.emit(&lost(2)).unwrap();
        for c in &mut clients {
            // The wake that refused `extra` may have come just before
            // event 1 was queued; then event 1 goes out with event 2, to
            // these clients too: 1 then 2, or 2 alone.
            let mut seq = read_line(c)["seq"].clone();
            if seq == 1 {
                seq = read_line(c)["seq"].clone();
            }
            assert_eq!(seq, 2);
        }
        drop(bus);
        assert_eq!(workers.join(PATIENCE).delivered, 2);
    }

    #[test]
    fn a_client_that_only_shuts_its_sending_side_keeps_receiving() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sock");
        let (mut bus, workers) = start(SocketSink::bind(&path, None).unwrap(), 64);
        let mut c = connect(&path);
        // What `ncat -U` does at the end of its input.
        c.get_mut().write_all(b"hello, ignored\n").unwrap();
        c.get_mut().shutdown(std::net::Shutdown::Write).unwrap();
        bus.emit(&lost(1)).unwrap();
        assert_eq!(read_line(&mut c)["seq"], 1);
        // Several idle wakes see the half-closed client.
        std::thread::sleep(IDLE_POLL * 3);
        bus.emit(&lost(2)).unwrap();
        assert_eq!(read_line(&mut c)["seq"], 2);
        drop(bus);
        workers.join(PATIENCE);
    }

    #[test]
    fn a_stale_socket_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sock");
        // A killed run: the file stays, nobody accepts.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (mut bus, workers) = start(SocketSink::bind(&path, None).unwrap(), 64);
        let mut c = connect(&path);
        bus.emit(&lost(1)).unwrap();
        assert_eq!(read_line(&mut c)["seq"], 1);
        drop(bus);
        workers.join(PATIENCE);
    }

    #[test]
    fn a_socket_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sock");
        let first = SocketSink::bind(&path, None).unwrap();
        let e = SocketSink::bind(&path, None).unwrap_err();
        assert!(matches!(e, SocketError::InUse { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        drop(first);
        assert!(!path.exists());
    }

    #[test]
    fn a_regular_file_at_the_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sock");
        std::fs::write(&path, "precious").unwrap();
        let e = SocketSink::bind(&path, None).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("not a socket"), "{msg}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }

    #[test]
    fn the_socket_file_is_removed_when_the_worker_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sock");
        let (bus, workers) = start(SocketSink::bind(&path, None).unwrap(), 64);
        assert!(path.exists());
        drop(bus);
        assert_eq!(workers.join(PATIENCE), Report::default());
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_unknown_group_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sock");
        let e = SocketSink::bind(&path, Some("ferd-no-such-group")).unwrap_err();
        assert!(matches!(e, SocketError::UnknownGroup { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("ferd-no-such-group"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        // Checked before binding: nothing left behind.
        assert!(!path.exists());
    }

    #[test]
    fn a_known_group_owns_the_socket() {
        // Our own group, which we may always chown to; skipped where it
        // has no name (some containers).
        let gid = unsafe { libc::getegid() };
        let Some(name) = group_name(gid) else { return };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sock");
        let _sink = SocketSink::bind(&path, Some(&name)).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.gid(), gid);
        assert_eq!(meta.mode() & 0o7777, 0o660);
    }

    /// The group's name from /etc/group.
    fn group_name(gid: libc::gid_t) -> Option<String> {
        let groups = std::fs::read_to_string("/etc/group").ok()?;
        groups.lines().find_map(|l| {
            let f: Vec<_> = l.split(':').collect();
            (f.len() >= 3 && f[2] == gid.to_string()).then(|| f[0].to_string())
        })
    }

    #[test]
    fn a_chain_names_the_os_error_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir/events.sock");
        let e = SocketSink::bind(&path, None).unwrap_err();
        let chain = format!("{:#}", anyhow::Error::new(e).context("cannot start"));
        assert_eq!(chain.matches("(os error 2)").count(), 1, "{chain}");
        assert!(chain.contains("no-such-dir/events.sock"), "{chain}");
    }
}
