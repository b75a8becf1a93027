//! An on-disk, bounded, crash-tolerant FIFO of outgoing messages.
//!
//! The MQTT client appends every event here before sending it and acks it
//! when the broker confirms, so a broker outage or a restart loses nothing
//! while the disk budget holds; when it does not, the *oldest* records go.
//!
//! # On disk
//!
//! One directory (created 0o750; an existing one, or a file in it, more
//! open than 0750/0640 draws a warning at open, see [`crate::permissions`])
//! holding:
//!
//! - `seg-<first id, 20 digits>.log`: segment files of records appended
//!   back to back. A new segment is started when the current one would
//!   pass `segment_target` (limit / 8, but at least min(64 KiB, limit / 2)),
//!   and at every [`Spool::open`]: old segments are only ever read,
//!   truncated (recovery) or deleted, never appended to again.
//! - one record, little-endian: `[magic 0xA5][u32 len][u32 crc][body]`,
//!   body = `[u64 id][u8 qos][u16 topic len][topic][payload]`, `len` the
//!   body's length, `crc` the CRC-32 (IEEE) of the four `len` bytes then the
//!   body. Ids start at 1 and increase by 1 for the spool's whole life.
//! - `head`: text, `ferd spool head` / `head <id>` / `next <id>`: every
//!   record below `head` is acknowledged; no id below `next` is ever given
//!   again. Replaced atomically (write `head.tmp`, fsync, rename, fsync the
//!   directory).
//!
//! # Durability
//!
//! [`Spool::append`] writes the record with one `write` call but does not
//! fsync; [`Spool::sync`] fdatasyncs what was appended (the caller does that
//! about once a second, SD cards wear). After a crash of the process
//! nothing appended is lost; after a power cut what was appended since the
//! last `sync` may be.
//!
//! The head is persisted when a segment is deleted, every
//! [`HEAD_PERSIST_EVERY`] acks, at open and when the spool is dropped, not on
//! every ack: after a crash up to that many acknowledged records are sent
//! again. Duplicates are fine (receivers de-duplicate by the event's seq),
//! losses are not, so the head on disk is never ahead of the real one.
//!
//! # Limit
//!
//! The segment files together stay within `limit_bytes` (the small `head`
//! file is not counted). To make room, whole segments are dropped from the
//! oldest end, records handed out but not yet acked included (their late
//! ack is ignored), so one drop removes about an eighth of the spool.
//!
//! # Recovery
//!
//! At open each segment is read whole (refused above twice the limit) and
//! decoded by [`decode_segment`]. A torn last record (crash mid-append) is
//! cut off with a warning; a corrupt record (bad magic, length or checksum)
//! is reported with a warning and the rest of that segment is skipped and
//! cut off, counted in [`Spool::dropped_at_open`]. The directory is locked
//! with `flock` while a `Spool` is open, so a second daemon cannot
//! interleave its writes.

use std::collections::VecDeque;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::permissions::{self, Kind};

/// The first byte of every record: a zero-filled or foreign region is
/// noticed at once rather than read as a length.
const MAGIC: u8 = 0xA5;
/// magic + len + crc.
const HEADER: usize = 9;
/// id + qos + topic length: a body shorter than this is corrupt.
const MIN_BODY: usize = 11;
/// The smallest record on disk; bounds how many ids a skipped region held.
const MIN_FRAME: usize = HEADER + MIN_BODY;
/// Acks between head writes (each write is a small fsync'd file + rename):
/// after a crash at most this many acknowledged records are resent.
pub const HEAD_PERSIST_EVERY: usize = 64;
/// Ids above this are corrupt (a head file or record claiming more would
/// otherwise let `next_id + 1` overflow). One id per microsecond would take
/// 146 000 years to get here.
const MAX_ID: u64 = 1 << 62;
/// The head file is three short lines; anything longer is not ours.
const MAX_HEAD_FILE: u64 = 256;
const HEAD_FILE: &str = "head";
const HEAD_TMP: &str = "head.tmp";

/// One queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The MQTT topic (at most 65535 bytes, MQTT's own limit).
    pub topic: String,
    /// The MQTT quality of service, stored as given.
    pub qos: u8,
    /// The message body.
    pub payload: Vec<u8>,
}

/// Why a spool operation failed; every variant names the file or directory.
///
/// The I/O error's text is part of the message, so it is deliberately not
/// also the `source()` (anyhow's `{:#}` would print it twice); hence the
/// field is named `error`, not `source`.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file system operation failed.
    #[error("spool {path}: cannot {op}: {error}")]
    Io {
        /// The file or directory operated on.
        path: PathBuf,
        /// What was being done (`open`, `write`, `fdatasync`, ...).
        op: &'static str,
        /// The I/O error (a full disk shows up here).
        error: io::Error,
    },
    /// Another `Spool` (most likely another ferd process) holds the
    /// directory.
    #[error("spool {dir}: already in use by another process")]
    Locked {
        /// The spool directory.
        dir: PathBuf,
    },
    /// One record is larger than the whole spool may be.
    #[error("spool {dir}: a record of {size} bytes is larger than the limit of {limit} bytes")]
    RecordTooBig {
        /// The spool directory.
        dir: PathBuf,
        /// The record's size on disk, framing included.
        size: u64,
        /// The spool's limit.
        limit: u64,
    },
    /// The topic does not fit the record's 16-bit topic length.
    #[error("spool {dir}: a topic of {len} bytes is longer than 65535 bytes")]
    TopicTooLong {
        /// The spool directory.
        dir: PathBuf,
        /// The topic's length in bytes.
        len: usize,
    },
}

/// One record found by [`decode_segment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedRecord {
    /// The record's id.
    pub id: u64,
    /// Where its frame starts in the segment.
    pub offset: usize,
    /// The frame's length, header included.
    pub len: usize,
}

/// How the bytes after the valid prefix of a segment look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentEnd {
    /// Nothing after the last record.
    Clean,
    /// An incomplete record (a short header, a length reaching past the
    /// end) or only zero bytes: what a crash during an append leaves.
    Torn,
    /// A complete-looking record that is wrong (magic, length, checksum,
    /// topic, id order): the rest of the segment cannot be trusted.
    Corrupt,
}

/// What [`decode_segment`] found in one segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The valid records, in file order, ids strictly increasing.
    pub records: Vec<DecodedRecord>,
    /// The length of the valid prefix (the end of the last valid record).
    pub valid_len: usize,
    /// What follows the valid prefix.
    pub end: SegmentEnd,
}

/// Decodes one segment file's bytes: the valid records with their offsets
/// and the length of the valid prefix. Pure, so a fuzz target can call it.
///
/// Never panics and allocates only the record list, at most one entry per
/// [`MIN_FRAME`] input bytes: a length field larger than the rest of the
/// input is a torn record, not an allocation.
pub fn decode_segment(bytes: &[u8]) -> Decoded {
    let mut records = Vec::new();
    let mut pos = 0;
    let mut last_id = 0;
    let end = loop {
        let rest = &bytes[pos..];
        if rest.is_empty() {
            break SegmentEnd::Clean;
        }
        match parse_frame(rest) {
            Ok(frame) if frame.id > last_id => {
                records.push(DecodedRecord {
                    id: frame.id,
                    offset: pos,
                    len: frame.len,
                });
                last_id = frame.id;
                pos += frame.len;
            }
            // Ids only grow within a segment: a repeat is a foreign or
            // stale region.
            Ok(_) => break SegmentEnd::Corrupt,
            Err(FrameError::Torn) => break SegmentEnd::Torn,
            Err(FrameError::Corrupt) => break SegmentEnd::Corrupt,
        }
    };
    Decoded {
        records,
        valid_len: pos,
        end,
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameError {
    Torn,
    Corrupt,
}

/// A decoded frame, borrowing the topic and payload from the input.
struct Frame<'a> {
    id: u64,
    qos: u8,
    topic: &'a str,
    payload: &'a [u8],
    /// The whole frame's length, header included.
    len: usize,
}

/// Decodes the frame at the start of `bytes` (trailing bytes ignored).
fn parse_frame(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    if bytes[..bytes.len().min(HEADER)].iter().all(|&b| b == 0) {
        // A crash can leave the file longer than what reached it, the gap
        // reading as zeros; no record starts with a zero byte.
        if bytes.iter().all(|&b| b == 0) {
            return Err(FrameError::Torn);
        }
        return Err(FrameError::Corrupt);
    }
    if bytes[0] != MAGIC {
        return Err(FrameError::Corrupt);
    }
    if bytes.len() < HEADER {
        return Err(FrameError::Torn);
    }
    let len_bytes = [bytes[1], bytes[2], bytes[3], bytes[4]];
    let body_len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
    if body_len < MIN_BODY {
        return Err(FrameError::Corrupt);
    }
    let rest = &bytes[HEADER..];
    if body_len > rest.len() {
        return Err(FrameError::Torn);
    }
    let body = &rest[..body_len];
    if crc32_update(crc32_update(!0, &len_bytes), body) != !crc {
        return Err(FrameError::Corrupt);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&body[..8]);
    let id = u64::from_le_bytes(id);
    let qos = body[8];
    let topic_len = u16::from_le_bytes([body[9], body[10]]) as usize;
    let after = &body[MIN_BODY..];
    if id == 0 || id > MAX_ID || topic_len > after.len() {
        return Err(FrameError::Corrupt);
    }
    let topic = std::str::from_utf8(&after[..topic_len]).map_err(|_| FrameError::Corrupt)?;
    Ok(Frame {
        id,
        qos,
        topic,
        payload: &after[topic_len..],
        len: HEADER + body_len,
    })
}

/// Encodes one frame; the caller checked that the topic fits a u16 and the
/// body a u32.
fn encode_frame(id: u64, record: &Record) -> Vec<u8> {
    let body_len = MIN_BODY + record.topic.len() + record.payload.len();
    let mut out = Vec::with_capacity(HEADER + body_len);
    out.push(MAGIC);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // the CRC, filled in below
    out.extend_from_slice(&id.to_le_bytes());
    out.push(record.qos);
    out.extend_from_slice(&(record.topic.len() as u16).to_le_bytes());
    out.extend_from_slice(record.topic.as_bytes());
    out.extend_from_slice(&record.payload);
    let crc = !crc32_update(crc32_update(!0, &out[1..5]), &out[HEADER..]);
    out[5..9].copy_from_slice(&crc.to_le_bytes());
    out
}

/// CRC-32 (IEEE 802.3, reflected 0xEDB88320), table built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// Feeds `bytes` into a running CRC (start with `!0`, finish with `!`).
fn crc32_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc = CRC_TABLE[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

/// One queued record in memory: where it is, not what it says (payloads
/// are read back from disk when handed out).
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u64,
    /// The first id of its segment (the segment's key).
    seg: u64,
    offset: u64,
    /// The frame's length on disk.
    len: u32,
    /// Acknowledged, but not yet at the head (acks come out of order).
    acked: bool,
}

/// One segment file.
struct Segment {
    first_id: u64,
    path: PathBuf,
    file: File,
    /// Bytes in the file (the valid prefix for recovered segments).
    size: u64,
    /// Index entries still pointing into it; 0 means it can go.
    entries: usize,
    /// Appended to since the last `sync`.
    unsynced: bool,
}

/// An on-disk bounded FIFO of [`Record`]s; see the module documentation.
pub struct Spool {
    dir: PathBuf,
    /// The open directory: held `flock`ed for the spool's life, and fsynced
    /// after renames and new files.
    dir_file: File,
    limit: u64,
    segment_target: u64,
    segments: VecDeque<Segment>,
    /// Whether the last segment takes appends (false after open and after a
    /// failed write that could not be undone).
    active: bool,
    /// Queued records in id order, acked ones kept until they reach the
    /// front.
    index: VecDeque<Entry>,
    /// How many entries from the front have been handed out.
    sent: usize,
    /// Unacked entries in `index`.
    live: usize,
    /// Unacked entries at or after `sent`.
    unsent: usize,
    /// Frame bytes of the unacked entries.
    live_bytes: u64,
    /// Bytes of all segment files.
    disk_bytes: u64,
    next_id: u64,
    persisted_head: u64,
    acks_since_persist: usize,
    /// A segment was created since the last directory fsync.
    dir_unsynced: bool,
    /// Drops made by an append that then failed, reported by the next one.
    pending_dropped: u64,
    dropped_at_open: u64,
    /// Tests simulate a crash by skipping the head write in `Drop`.
    #[cfg(test)]
    crashed: bool,
}

impl Spool {
    /// Opens (creating with mode 0o750 if missing) the spool directory and
    /// recovers what a previous process left.
    ///
    /// Records already acknowledged are not returned again (up to
    /// [`HEAD_PERSIST_EVERY`] may be after a crash); a torn record at the
    /// tail of a segment (crash mid-append) is cut off with a `log::warn`
    /// naming the file; a corrupt record is reported likewise and the rest
    /// of its segment is dropped ([`Spool::dropped_at_open`]). If what is
    /// on disk exceeds `limit_bytes` (the limit was lowered) the oldest
    /// segments are dropped. Fails if another `Spool` holds the directory.
    pub fn open(dir: &Path, limit_bytes: u64) -> Result<Spool, SpoolError> {
        let io_err = |path: &Path, op: &'static str| {
            let path = path.to_path_buf();
            move |error| SpoolError::Io { path, op, error }
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(io_err(dir, "create the directory"))?;
        let dir_file = File::open(dir).map_err(io_err(dir, "open the directory"))?;
        // An existing directory keeps its mode; one made by hand or by an
        // older setup may let others list or add files.
        let meta = dir_file
            .metadata()
            .map_err(io_err(dir, "inspect the directory"))?;
        permissions::warn_if_loose_meta(dir, "spool directory", Kind::Directory, &meta);
        // SAFETY: flock on a descriptor we own, no pointers involved.
        if unsafe { libc::flock(dir_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::WouldBlock {
                return Err(SpoolError::Locked {
                    dir: dir.to_path_buf(),
                });
            }
            return Err(SpoolError::Io {
                path: dir.to_path_buf(),
                op: "lock the directory",
                error,
            });
        }
        let segment_target = (limit_bytes / 8).max((64 * 1024).min(limit_bytes / 2));
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            dir_file,
            limit: limit_bytes,
            segment_target,
            segments: VecDeque::new(),
            active: false,
            index: VecDeque::new(),
            sent: 0,
            live: 0,
            unsent: 0,
            live_bytes: 0,
            disk_bytes: 0,
            next_id: 1,
            persisted_head: 0,
            acks_since_persist: 0,
            dir_unsynced: false,
            pending_dropped: 0,
            dropped_at_open: 0,
            #[cfg(test)]
            crashed: false,
        };
        spool.recover()?;
        Ok(spool)
    }

    /// Reads the head file and the segments into the index (see `open`).
    fn recover(&mut self) -> Result<(), SpoolError> {
        let (head, next_floor) = self.read_head()?;
        let tmp = self.dir.join(HEAD_TMP);
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(SpoolError::Io {
                    path: tmp,
                    op: "remove",
                    error: e,
                })
            }
            _ => {}
        }
        let names = self.list_segments()?;
        let max_segment = self.limit.saturating_mul(2);
        let mut next_id = next_floor.max(head).max(1);
        let mut last_id = 0u64;
        let mut to_delete = Vec::new();
        for (i, (name_id, path)) in names.iter().enumerate() {
            let name_id = *name_id;
            let next_name = names.get(i + 1).map(|n| n.0);
            // The record `name_id` was assigned when this file was made.
            next_id = next_id.max(name_id.saturating_add(1));
            let file = File::open(path).map_err(|error| SpoolError::Io {
                path: path.clone(),
                op: "open",
                error,
            })?;
            let meta = file.metadata().map_err(|error| SpoolError::Io {
                path: path.clone(),
                op: "stat",
                error,
            })?;
            // Segments hold every queued event; ferd makes them 0640, but
            // one restored or copied by hand may be looser.
            permissions::warn_if_loose_meta(path, "spool segment", Kind::Secret, &meta);
            let size = meta.len();
            if size > max_segment || usize::try_from(size).is_err() {
                log::warn!(
                    "{}: {size} bytes, more than twice the spool limit of {} bytes: dropped unread",
                    path.display(),
                    self.limit
                );
                self.dropped_at_open += lost_ids(name_id.max(head), next_name);
                if next_name.is_none() {
                    next_id = next_id.max(name_id.saturating_add(size / MIN_FRAME as u64 + 1));
                }
                to_delete.push(path.clone());
                continue;
            }
            let mut bytes = Vec::with_capacity(size as usize);
            (&file)
                .take(size)
                .read_to_end(&mut bytes)
                .map_err(|error| SpoolError::Io {
                    path: path.clone(),
                    op: "read",
                    error,
                })?;
            let mut decoded = decode_segment(&bytes);
            // Ids also grow across segments and stay within the range the
            // file names give; a record outside it is foreign or stale.
            // (A record over 4 GiB cannot have been written by `append`.)
            if let Some(k) = decoded.records.iter().position(|r| {
                r.id <= last_id
                    || r.id < name_id
                    || next_name.is_some_and(|n| r.id >= n)
                    || r.len > u32::MAX as usize
            }) {
                decoded.valid_len = decoded.records[k].offset;
                decoded.records.truncate(k);
                decoded.end = SegmentEnd::Corrupt;
            }
            let valid_len = decoded.valid_len as u64;
            let skipped = bytes.len() - decoded.valid_len;
            drop(bytes);
            let last_here = decoded.records.last().map(|r| r.id);
            if decoded.end != SegmentEnd::Clean {
                let first_lost = last_here.map_or(name_id, |id| id + 1);
                if decoded.end == SegmentEnd::Torn {
                    log::warn!(
                        "{}: torn record at offset {valid_len} ({skipped} bytes, a crash during an append) cut off",
                        path.display()
                    );
                } else {
                    let lost = lost_ids(first_lost.max(head), next_name);
                    log::warn!(
                        "{}: corrupt record at offset {valid_len}: the rest of the segment ({skipped} bytes, {}{lost} record(s)) dropped",
                        path.display(),
                        if next_name.is_some() { "" } else { "at least " }
                    );
                    self.dropped_at_open += lost;
                }
                if next_name.is_none() {
                    // The lost bytes may have held records whose ids were
                    // handed out; never give those ids again.
                    next_id =
                        next_id.max(first_lost.saturating_add((skipped / MIN_FRAME) as u64 + 1));
                }
                let cut = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|f| f.set_len(valid_len).and_then(|()| f.sync_all()));
                cut.map_err(|error| SpoolError::Io {
                    path: path.clone(),
                    op: "truncate",
                    error,
                })?;
            }
            if let Some(id) = last_here {
                last_id = id;
                next_id = next_id.max(id + 1);
            }
            let live: Vec<&DecodedRecord> =
                decoded.records.iter().filter(|r| r.id >= head).collect();
            if live.is_empty() {
                to_delete.push(path.clone());
                continue;
            }
            for r in &live {
                self.index.push_back(Entry {
                    id: r.id,
                    seg: name_id,
                    offset: r.offset as u64,
                    len: r.len as u32,
                    acked: false,
                });
                self.live_bytes += r.len as u64;
            }
            self.live += live.len();
            self.disk_bytes += valid_len;
            self.segments.push_back(Segment {
                first_id: name_id,
                path: path.clone(),
                file,
                size: valid_len,
                entries: live.len(),
                unsynced: false,
            });
        }
        self.unsent = self.live;
        self.next_id = next_id;
        // A limit lowered since the last run.
        let mut over = 0;
        while self.disk_bytes > self.limit {
            let Some(seg) = self.segments.pop_front() else {
                break;
            };
            over += self.forget_segment(&seg);
            to_delete.push(seg.path);
        }
        if over > 0 {
            log::warn!(
                "spool {}: over its limit of {} bytes: dropped the {over} oldest record(s)",
                self.dir.display(),
                self.limit
            );
            self.dropped_at_open += over;
        }
        // Once per start: records the recovered head and next id before
        // deleting anything, so a crash in between loses nothing.
        self.persist_head()?;
        for path in to_delete {
            remove(&path)?;
        }
        Ok(())
    }

    /// `(head, next)` from the head file; `(0, 0)` (resend everything) if
    /// it is missing or unreadable.
    fn read_head(&self) -> Result<(u64, u64), SpoolError> {
        let path = self.dir.join(HEAD_FILE);
        let io_err = |error| SpoolError::Io {
            path: path.clone(),
            op: "read",
            error,
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
            Err(e) => return Err(io_err(e)),
        };
        if let Ok(meta) = file.metadata() {
            permissions::warn_if_loose_meta(&path, "spool head", Kind::Secret, &meta);
        }
        let mut text = Vec::new();
        (&file)
            .take(MAX_HEAD_FILE + 1)
            .read_to_end(&mut text)
            .map_err(io_err)?;
        match parse_head(&text) {
            Some(v) => Ok(v),
            None => {
                log::warn!(
                    "{}: unreadable: every record in the spool will be sent again",
                    path.display()
                );
                Ok((0, 0))
            }
        }
    }

    /// The segment files in the directory, by first id.
    fn list_segments(&self) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
        let io_err = |error| SpoolError::Io {
            path: self.dir.clone(),
            op: "list",
            error,
        };
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name();
            if let Some(id) = name.to_str().and_then(parse_segment_name) {
                out.push((id, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Appends one record, written to its segment file before returning
    /// (not fsynced: see [`Spool::sync`]).
    ///
    /// Returns how many of the oldest unacknowledged records were dropped
    /// to keep the segment files within `limit_bytes` (usually 0; drops
    /// made by an earlier append that then failed are included). A record
    /// larger than the limit is [`SpoolError::RecordTooBig`]. On a write
    /// error (a full disk) the partial record is cut off again and the
    /// spool stays usable.
    pub fn append(&mut self, record: &Record) -> Result<u64, SpoolError> {
        if record.topic.len() > u16::MAX as usize {
            return Err(SpoolError::TopicTooLong {
                dir: self.dir.clone(),
                len: record.topic.len(),
            });
        }
        let body = (MIN_BODY + record.topic.len()) as u64 + record.payload.len() as u64;
        let size = HEADER as u64 + body;
        if size > self.limit || size > u32::MAX as u64 {
            return Err(SpoolError::RecordTooBig {
                dir: self.dir.clone(),
                size,
                limit: self.limit,
            });
        }
        // Roll before dropping: the new active segment starts empty, so
        // dropping every older one always makes room (size ≤ limit).
        if self.active {
            if let Some(last) = self.segments.back() {
                if last.size + size > self.segment_target {
                    self.active = false;
                }
            }
        }
        let mut dropped = std::mem::take(&mut self.pending_dropped);
        let mut gone = Vec::new();
        while self.disk_bytes + size > self.limit {
            if self.segments.is_empty() || (self.active && self.segments.len() == 1) {
                break;
            }
            let Some(seg) = self.segments.pop_front() else {
                break;
            };
            dropped += self.forget_segment(&seg);
            gone.push(seg);
        }
        // A rolled segment whose records are all acked goes too.
        let reaped = self.take_empty_segments();
        gone.extend(reaped);
        if !gone.is_empty() {
            if dropped > 0 {
                log::warn!(
                    "spool {}: full ({} bytes): dropped the {dropped} oldest record(s)",
                    self.dir.display(),
                    self.limit
                );
            }
            let persisted = self.persist_head();
            let removed = gone.iter().try_for_each(|s| remove(&s.path));
            if let Err(e) = persisted.and(removed) {
                self.pending_dropped = dropped;
                return Err(e);
            }
        }
        if let Err(e) = self.write_record(record, size) {
            self.pending_dropped = dropped;
            return Err(e);
        }
        Ok(dropped)
    }

    /// Writes one record to the active segment (making one if needed) and
    /// indexes it.
    fn write_record(&mut self, record: &Record, size: u64) -> Result<(), SpoolError> {
        let id = self.next_id;
        if !self.active {
            let path = self.dir.join(segment_name(id));
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .create_new(true)
                .mode(0o640)
                .open(&path)
                .map_err(|error| SpoolError::Io {
                    path: path.clone(),
                    op: "create",
                    error,
                })?;
            self.segments.push_back(Segment {
                first_id: id,
                path,
                file,
                size: 0,
                entries: 0,
                unsynced: true,
            });
            self.active = true;
            self.dir_unsynced = true;
        }
        let frame = encode_frame(id, record);
        let Some(seg) = self.segments.back_mut() else {
            // Unreachable: a segment was pushed above if none was active.
            return Err(SpoolError::Io {
                path: self.dir.clone(),
                op: "append",
                error: io::Error::other("no segment to append to"),
            });
        };
        if let Err(error) = (&seg.file).write_all(&frame) {
            // Cut a partial frame off so later records are not stuck behind
            // it; if even that fails, start a new segment next time.
            if seg.file.set_len(seg.size).is_err() {
                self.active = false;
            }
            return Err(SpoolError::Io {
                path: seg.path.clone(),
                op: "write",
                error,
            });
        }
        self.index.push_back(Entry {
            id,
            seg: seg.first_id,
            offset: seg.size,
            len: size as u32,
            acked: false,
        });
        seg.size += size;
        seg.entries += 1;
        seg.unsynced = true;
        self.disk_bytes += size;
        self.live_bytes += size;
        self.live += 1;
        self.unsent += 1;
        self.next_id += 1;
        Ok(())
    }

    /// The next record not yet handed out since open or the last
    /// [`Spool::rewind`], in FIFO order, with its id. `None` when all are
    /// handed out.
    ///
    /// A record that reads back corrupt (the disk changed under us) is
    /// dropped with a warning and the next one returned; an I/O error is
    /// returned and the same record is tried again on the next call.
    pub fn next_unsent(&mut self) -> Result<Option<(u64, Record)>, SpoolError> {
        while let Some(&entry) = self.index.get(self.sent) {
            if entry.acked {
                self.sent += 1;
                continue;
            }
            let Some(seg) = self.segment(entry.seg) else {
                // Unreachable: entries are removed with their segment.
                self.sent += 1;
                self.drop_unreadable(entry, "its segment is gone")?;
                continue;
            };
            let mut buf = vec![0; entry.len as usize];
            match seg.file.read_exact_at(&mut buf, entry.offset) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.sent += 1;
                    self.drop_unreadable(entry, "the file was shortened")?;
                    continue;
                }
                Err(error) => {
                    return Err(SpoolError::Io {
                        path: seg.path.clone(),
                        op: "read",
                        error,
                    })
                }
            }
            self.sent += 1;
            match parse_frame(&buf) {
                Ok(f) if f.id == entry.id && f.len == buf.len() => {
                    self.unsent -= 1;
                    let record = Record {
                        topic: f.topic.to_owned(),
                        qos: f.qos,
                        payload: f.payload.to_vec(),
                    };
                    return Ok(Some((entry.id, record)));
                }
                _ => self.drop_unreadable(entry, "it no longer matches its checksum")?,
            }
        }
        Ok(None)
    }

    /// Drops a record that cannot be read back (the entry just passed by
    /// `next_unsent`, so counted as unsent until now).
    fn drop_unreadable(&mut self, entry: Entry, why: &str) -> Result<(), SpoolError> {
        let path = self
            .segment(entry.seg)
            .map_or_else(|| self.dir.clone(), |s| s.path.clone());
        log::warn!(
            "{}: record {} at offset {} dropped: {why}",
            path.display(),
            entry.id,
            entry.offset
        );
        if let Some(e) = self.index.get_mut(self.sent - 1) {
            e.acked = true;
        }
        self.unsent -= 1;
        self.live -= 1;
        self.live_bytes -= entry.len as u64;
        self.pop_acked_prefix()
    }

    /// Every record not acknowledged becomes unsent again: after a
    /// reconnect everything in flight is resent, in order.
    pub fn rewind(&mut self) {
        self.sent = 0;
        self.unsent = self.live;
    }

    /// Acknowledges record `id`. Acks may come out of order; the
    /// acknowledged prefix is removed from the head, segments whose records
    /// are all acknowledged are deleted (except the one being appended to),
    /// and the head is persisted when a segment goes or every
    /// [`HEAD_PERSIST_EVERY`] acks. Unknown ids (already acked, dropped) are
    /// ignored. On an error the ack still counts in memory; only writing
    /// the head or deleting a file failed.
    pub fn ack(&mut self, id: u64) -> Result<(), SpoolError> {
        let Ok(pos) = self.index.binary_search_by_key(&id, |e| e.id) else {
            return Ok(());
        };
        let entry = &mut self.index[pos];
        if entry.acked {
            return Ok(());
        }
        entry.acked = true;
        self.live -= 1;
        self.live_bytes -= entry.len as u64;
        if pos >= self.sent {
            // Acked before it was handed out again after a rewind.
            self.unsent -= 1;
        }
        self.pop_acked_prefix()
    }

    /// Removes acked entries from the front, deletes emptied segments and
    /// persists the head when due.
    fn pop_acked_prefix(&mut self) -> Result<(), SpoolError> {
        while let Some(e) = self.index.front() {
            if !e.acked {
                break;
            }
            let seg = e.seg;
            self.index.pop_front();
            self.sent = self.sent.saturating_sub(1);
            if let Some(s) = self.segment_mut(seg) {
                s.entries = s.entries.saturating_sub(1);
            }
            self.acks_since_persist += 1;
        }
        let gone = self.take_empty_segments();
        if !gone.is_empty() || self.acks_since_persist >= HEAD_PERSIST_EVERY {
            // Head first: a crash between the two leaves an acked segment
            // that the next open deletes. The files go even if the head
            // could not be written: their records are acked, and a stale
            // head only means duplicates.
            let persisted = self.persist_head();
            let removed = gone.iter().try_for_each(|s| remove(&s.path));
            persisted.and(removed)?;
        }
        Ok(())
    }

    /// Takes the segments with no entries left off the front (not the one
    /// being appended to); the caller persists the head, then deletes them.
    fn take_empty_segments(&mut self) -> Vec<Segment> {
        let mut gone = Vec::new();
        while let Some(front) = self.segments.front() {
            if front.entries > 0 || (self.active && self.segments.len() == 1) {
                break;
            }
            if let Some(seg) = self.segments.pop_front() {
                self.disk_bytes -= seg.size;
                gone.push(seg);
            }
        }
        gone
    }

    /// Removes a segment's entries (it was just taken off the front) and
    /// returns how many of them were not yet acknowledged.
    fn forget_segment(&mut self, seg: &Segment) -> u64 {
        let mut dropped = 0;
        while let Some(e) = self.index.front() {
            if e.seg != seg.first_id {
                break;
            }
            let e = *e;
            self.index.pop_front();
            if !e.acked {
                dropped += 1;
                self.live -= 1;
                self.live_bytes -= e.len as u64;
                if self.sent == 0 {
                    self.unsent -= 1;
                }
            }
            self.sent = self.sent.saturating_sub(1);
        }
        self.disk_bytes -= seg.size;
        dropped
    }

    /// fdatasyncs what was appended since the last call (and the directory
    /// when a segment was created). The caller calls it at most about once
    /// a second: SD cards wear.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        for seg in self.segments.iter_mut().filter(|s| s.unsynced) {
            seg.file.sync_data().map_err(|error| SpoolError::Io {
                path: seg.path.clone(),
                op: "fdatasync",
                error,
            })?;
            seg.unsynced = false;
        }
        if self.dir_unsynced {
            self.sync_dir()?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    /// Writes the head file atomically: temp file, fsync, rename, fsync of
    /// the directory.
    fn persist_head(&mut self) -> Result<(), SpoolError> {
        let head = self.head_id();
        let text = format!("ferd spool head\nhead {head}\nnext {}\n", self.next_id);
        let tmp = self.dir.join(HEAD_TMP);
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_data()));
        written.map_err(|error| SpoolError::Io {
            path: tmp.clone(),
            op: "write",
            error,
        })?;
        let path = self.dir.join(HEAD_FILE);
        fs::rename(&tmp, &path).map_err(|error| SpoolError::Io {
            path,
            op: "rename head.tmp to",
            error,
        })?;
        self.sync_dir()?;
        self.persisted_head = head;
        self.acks_since_persist = 0;
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), SpoolError> {
        self.dir_file.sync_all().map_err(|error| SpoolError::Io {
            path: self.dir.clone(),
            op: "fsync the directory",
            error,
        })
    }

    /// The first unacknowledged id (the next id to be given if none).
    fn head_id(&self) -> u64 {
        self.index.front().map_or(self.next_id, |e| e.id)
    }

    fn segment_pos(&self, first_id: u64) -> Option<usize> {
        self.segments
            .binary_search_by_key(&first_id, |s| s.first_id)
            .ok()
    }

    fn segment(&self, first_id: u64) -> Option<&Segment> {
        self.segment_pos(first_id).map(|i| &self.segments[i])
    }

    fn segment_mut(&mut self, first_id: u64) -> Option<&mut Segment> {
        self.segment_pos(first_id).map(|i| &mut self.segments[i])
    }

    /// Records queued (not acknowledged), handed out or not.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no record is queued.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Bytes on disk the queued records take, framing included.
    pub fn bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Bytes of the segment files: what the limit bounds, at least
    /// [`Spool::bytes`] (acknowledged records stay until their segment
    /// goes).
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Records not yet handed out by [`Spool::next_unsent`].
    pub fn unsent(&self) -> usize {
        self.unsent
    }

    /// Unacknowledged records lost when opening: corrupt regions and a
    /// limit lowered since the last run. A corrupt region at the end of the
    /// newest segment counts as one, its real number being unknown.
    pub fn dropped_at_open(&self) -> u64 {
        self.dropped_at_open
    }

    /// Test hook: drops the spool like a killed process would (no head
    /// write).
    #[cfg(test)]
    fn crash(mut self) {
        self.crashed = true;
    }
}

impl Drop for Spool {
    /// Persists the head if acks moved it, so a clean shutdown resends
    /// nothing; a failure is only logged (nothing is lost, some records
    /// are sent twice).
    fn drop(&mut self) {
        #[cfg(test)]
        if self.crashed {
            return;
        }
        if self.head_id() != self.persisted_head {
            if let Err(e) = self.persist_head() {
                log::warn!("{e}");
            }
        }
    }
}

/// How many ids from `first` up to the next segment's first id were lost;
/// 1 (at least) when no segment follows.
fn lost_ids(first: u64, next_name: Option<u64>) -> u64 {
    match next_name {
        Some(n) => n.saturating_sub(first),
        None => 1,
    }
}

fn remove(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SpoolError::Io {
            path: path.to_path_buf(),
            op: "remove",
            error: e,
        }),
        _ => Ok(()),
    }
}

fn segment_name(first_id: u64) -> String {
    format!("seg-{first_id:020}.log")
}

/// The first id from `seg-<20 digits>.log`; other names are not segments.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&id| id > 0 && id <= MAX_ID)
}

/// `(head, next)` from the head file's text, `None` if malformed.
fn parse_head(text: &[u8]) -> Option<(u64, u64)> {
    if text.len() as u64 > MAX_HEAD_FILE {
        return None;
    }
    let text = std::str::from_utf8(text).ok()?;
    let mut lines = text.lines();
    if lines.next()? != "ferd spool head" {
        return None;
    }
    let head: u64 = lines.next()?.strip_prefix("head ")?.parse().ok()?;
    let next: u64 = lines.next()?.strip_prefix("next ")?.parse().ok()?;
    if lines.next().is_some() || head > next || next > MAX_ID {
        return None;
    }
    Some((head, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> Record {
        Record {
            topic: format!("ferd/test/{}", i % 3),
            qos: (i % 3) as u8,
            payload: format!("payload {i} {}", "x".repeat((i % 17) as usize)).into_bytes(),
        }
    }

    fn drain(s: &mut Spool) -> Vec<(u64, Record)> {
        let mut out = Vec::new();
        while let Some(r) = s.next_unsent().unwrap() {
            out.push(r);
        }
        out
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(parse_segment_name)
                    .is_some()
            })
            .collect();
        v.sort();
        v
    }

    fn files_size(dir: &Path) -> u64 {
        segment_files(dir)
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum()
    }

    /// Recomputes the counters kept incrementally.
    fn check(s: &Spool) {
        let live: Vec<&Entry> = s.index.iter().filter(|e| !e.acked).collect();
        assert_eq!(s.live, live.len());
        assert_eq!(s.live_bytes, live.iter().map(|e| e.len as u64).sum::<u64>());
        let unsent = s.index.iter().skip(s.sent).filter(|e| !e.acked).count();
        assert_eq!(s.unsent, unsent);
        assert!(s.sent <= s.index.len());
        assert_eq!(s.disk_bytes, s.segments.iter().map(|x| x.size).sum::<u64>());
        assert!(s.index.front().is_none_or(|e| !e.acked));
        for (i, seg) in s.segments.iter().enumerate() {
            let n = s.index.iter().filter(|e| e.seg == seg.first_id).count();
            assert_eq!(seg.entries, n);
            let last_active = s.active && i + 1 == s.segments.len();
            assert!(n > 0 || last_active, "empty segment kept");
        }
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(!crc32_update(!0, b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn frame_round_trip_and_names() {
        let r = rec(5);
        let f = encode_frame(42, &r);
        let d = decode_segment(&f);
        assert_eq!(d.end, SegmentEnd::Clean);
        assert_eq!(
            d.records,
            vec![DecodedRecord {
                id: 42,
                offset: 0,
                len: f.len()
            }]
        );
        let p = parse_frame(&f).unwrap();
        assert_eq!(
            (p.topic, p.qos, p.payload),
            (r.topic.as_str(), r.qos, &r.payload[..])
        );
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("seg-42.log"), None);
        assert_eq!(parse_segment_name("head"), None);
        assert_eq!(
            parse_head(b"ferd spool head\nhead 3\nnext 9\n"),
            Some((3, 9))
        );
        assert_eq!(parse_head(b"ferd spool head\nhead 9\nnext 3\n"), None);
        assert_eq!(parse_head(b"garbage"), None);
    }

    #[test]
    fn order_preserved_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..100 {
            assert_eq!(s.append(&rec(i)).unwrap(), 0);
        }
        s.sync().unwrap();
        check(&s);
        let before = drain(&mut s);
        assert_eq!(before.len(), 100);
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((s.len(), s.unsent(), s.dropped_at_open()), (100, 100, 0));
        let after = drain(&mut s);
        assert_eq!(before, after);
        for (i, (_, r)) in after.iter().enumerate() {
            assert_eq!(*r, rec(i as u64));
        }
        check(&s);
    }

    #[test]
    fn acked_not_returned_after_reopen_unacked_keep_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..10 {
            s.append(&rec(i)).unwrap();
        }
        let all = drain(&mut s);
        for (id, _) in &all[..4] {
            s.ack(*id).unwrap();
        }
        s.ack(all[6].0).unwrap();
        check(&s);
        assert_eq!(s.len(), 5);
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        let again = drain(&mut s);
        // The head only covers the acked prefix: id 6 (acked after a gap)
        // may come again, a duplicate, never a loss.
        let expect: Vec<_> = all[4..].to_vec();
        assert_eq!(again, expect);
        // New ids continue after the old ones.
        s.append(&rec(99)).unwrap();
        let (id, r) = s.next_unsent().unwrap().unwrap();
        assert!(id > all[9].0);
        assert_eq!(r, rec(99));
    }

    #[test]
    fn rewind_resends_unacked_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..6 {
            s.append(&rec(i)).unwrap();
        }
        let first = drain(&mut s);
        assert_eq!(s.unsent(), 0);
        s.ack(first[1].0).unwrap();
        s.ack(first[4].0).unwrap();
        s.rewind();
        check(&s);
        assert_eq!(s.unsent(), 4);
        let again = drain(&mut s);
        let expect: Vec<_> = [0, 2, 3, 5].iter().map(|&i| first[i].clone()).collect();
        assert_eq!(again, expect);
        // Appends after a partial send come after the resent ones.
        s.rewind();
        s.append(&rec(6)).unwrap();
        let ids: Vec<u64> = drain(&mut s).iter().map(|r| r.0).collect();
        assert_eq!(ids.len(), 5);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        check(&s);
    }

    #[test]
    fn out_of_order_acks() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..5 {
            s.append(&rec(i)).unwrap();
        }
        let ids: Vec<u64> = drain(&mut s).iter().map(|r| r.0).collect();
        for &k in &[3, 1, 4] {
            s.ack(ids[k]).unwrap();
            check(&s);
        }
        assert_eq!(s.len(), 2);
        assert_eq!(s.head_id(), ids[0]);
        s.ack(ids[0]).unwrap();
        assert_eq!(s.head_id(), ids[2]);
        s.ack(ids[3]).unwrap(); // twice: ignored
        s.ack(12345).unwrap(); // unknown: ignored
        s.ack(ids[2]).unwrap();
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        check(&s);
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(s.is_empty());
        assert_eq!(s.next_unsent().unwrap(), None);
        assert!(segment_files(dir.path()).is_empty());
    }

    #[test]
    fn limit_drops_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let limit = 8 * 1024;
        let mut s = Spool::open(dir.path(), limit).unwrap();
        let mut total_dropped = 0;
        let payload = vec![7u8; 200];
        let mut handed = Vec::new();
        for i in 0..500u64 {
            let r = Record {
                topic: "t".into(),
                qos: 1,
                payload: payload.clone(),
            };
            total_dropped += s.append(&r).unwrap();
            if i == 10 {
                handed.push(s.next_unsent().unwrap().unwrap().0);
            }
            assert!(s.bytes() <= limit);
            assert!(s.disk_bytes() <= limit);
            assert!(files_size(dir.path()) <= limit);
            check(&s);
        }
        assert!(total_dropped > 0);
        assert_eq!(total_dropped + s.len() as u64, 500);
        // What is left is the newest, in order, without gaps.
        let left: Vec<u64> = drain(&mut s).iter().map(|r| r.0).collect();
        assert_eq!(left.len(), s.len());
        assert_eq!(*left.last().unwrap(), 500);
        assert!(left.windows(2).all(|w| w[1] == w[0] + 1));
        // The ack of a dropped record is ignored.
        s.ack(handed[0]).unwrap();
        assert_eq!(s.len(), left.len());
        check(&s);
    }

    #[test]
    fn record_too_big_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1024).unwrap();
        s.append(&rec(1)).unwrap();
        let big = Record {
            topic: "t".into(),
            qos: 0,
            payload: vec![0; 2000],
        };
        let e = s.append(&big).unwrap_err();
        assert!(
            matches!(
                e,
                SpoolError::RecordTooBig {
                    size: 2021,
                    limit: 1024,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains(&dir.path().display().to_string()));
        let long = Record {
            topic: "t".repeat(70_000),
            qos: 0,
            payload: vec![],
        };
        assert!(matches!(
            s.append(&long).unwrap_err(),
            SpoolError::TopicTooLong { len: 70_000, .. }
        ));
        // Nothing was dropped for them.
        assert_eq!(s.len(), 1);
        assert_eq!(s.next_unsent().unwrap().unwrap().1, rec(1));
    }

    #[test]
    fn torn_tail_recovers_complete_records() {
        for cut in [1, 3, 9, 15] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
            for i in 0..20 {
                s.append(&rec(i)).unwrap();
            }
            s.crash();
            let segs = segment_files(dir.path());
            let last = segs.last().unwrap();
            let len = fs::metadata(last).unwrap().len();
            let f = OpenOptions::new().write(true).open(last).unwrap();
            f.set_len(len - cut).unwrap();
            drop(f);
            let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
            let got = drain(&mut s);
            assert_eq!(got.len(), 19, "cut {cut}");
            for (i, (_, r)) in got.iter().enumerate() {
                assert_eq!(*r, rec(i as u64));
            }
            assert_eq!(s.dropped_at_open(), 0);
            // The torn bytes were cut off; new appends go on after them
            // and the next open is clean.
            s.append(&rec(100)).unwrap();
            let (id, _) = s.next_unsent().unwrap().unwrap();
            assert!(id > 20, "the torn record's id is not given again");
            drop(s);
            let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(s.dropped_at_open(), 0);
            assert_eq!(drain(&mut s).len(), 20);
        }
    }

    #[test]
    fn zero_filled_tail_is_torn() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..3 {
            s.append(&rec(i)).unwrap();
        }
        drop(s);
        let last = segment_files(dir.path()).pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&last).unwrap();
        f.write_all(&[0; 4096]).unwrap();
        drop(f);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(drain(&mut s).len(), 3);
        assert_eq!(s.dropped_at_open(), 0);
    }

    #[test]
    fn corrupt_byte_in_the_middle_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let limit = 8192; // 4 KiB segments: two files
        let mut s = Spool::open(dir.path(), limit).unwrap();
        for i in 0..100 {
            assert_eq!(s.append(&rec(i)).unwrap(), 0);
        }
        drop(s);
        let segs = segment_files(dir.path());
        assert!(segs.len() >= 2, "{segs:?}");
        // Corrupt the payload of the 3rd record of the first segment.
        let mut bytes = fs::read(&segs[0]).unwrap();
        let d = decode_segment(&bytes);
        let n_first = d.records.len() as u64;
        let victim = d.records[2];
        bytes[victim.offset + victim.len - 1] ^= 0x40;
        fs::write(&segs[0], &bytes).unwrap();
        assert_eq!(decode_segment(&bytes).end, SegmentEnd::Corrupt);

        let mut s = Spool::open(dir.path(), limit).unwrap();
        assert_eq!(s.dropped_at_open(), n_first - 2);
        let got = drain(&mut s);
        assert_eq!(got.len() as u64, 100 - (n_first - 2));
        assert_eq!(got[0].1, rec(0));
        assert_eq!(got[1].1, rec(1));
        assert_eq!(got[2].1, rec(n_first));
        check(&s);
        drop(s);
        // Reported once: the bad region was cut off.
        let s = Spool::open(dir.path(), limit).unwrap();
        assert_eq!(s.dropped_at_open(), 0);
        assert_eq!(s.len() as u64, 100 - (n_first - 2));
    }

    #[test]
    fn corrupt_on_disk_after_open_is_dropped_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..3 {
            s.append(&rec(i)).unwrap();
        }
        let seg = segment_files(dir.path()).pop().unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        let second = decode_segment(&bytes).records[1];
        bytes[second.offset + HEADER + 12] ^= 1;
        fs::write(&seg, &bytes).unwrap();
        let got = drain(&mut s);
        assert_eq!(
            got.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
            vec![rec(0), rec(2)]
        );
        assert_eq!(s.len(), 2);
        check(&s);
    }

    /// queue-file 2.0.0 lost or mangled data on exactly this cycle.
    #[test]
    fn grow_drain_reopen_cycle_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let limit = 16 * 1024;
        let mut last_id = 0;
        let mut n = 0u64;
        for round in 0..6 {
            let mut s = Spool::open(dir.path(), limit).unwrap();
            assert!(s.is_empty(), "round {round}");
            let count = 10 + round * 37;
            let first = n;
            for _ in 0..count {
                assert_eq!(s.append(&rec(n)).unwrap(), 0);
                n += 1;
            }
            if round % 2 == 1 {
                // Half the rounds reopen between growing and draining.
                drop(s);
                s = Spool::open(dir.path(), limit).unwrap();
            }
            let got = drain(&mut s);
            assert_eq!(got.len() as u64, count);
            for (k, (id, r)) in got.iter().enumerate() {
                assert_eq!(*r, rec(first + k as u64), "round {round}");
                assert!(*id > last_id);
                last_id = *id;
                s.ack(*id).unwrap();
            }
            assert!(s.is_empty());
            check(&s);
            drop(s);
            let mut s = Spool::open(dir.path(), limit).unwrap();
            assert_eq!(s.next_unsent().unwrap(), None, "round {round}");
        }
        assert!(segment_files(dir.path()).is_empty());
    }

    #[test]
    fn crash_resends_at_most_the_unpersisted_acks() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..200 {
            s.append(&rec(i)).unwrap();
        }
        let got = drain(&mut s);
        for (id, _) in &got[..150] {
            s.ack(*id).unwrap();
        }
        s.sync().unwrap();
        s.crash();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        let again = drain(&mut s);
        assert!(again.len() >= 50 && again.len() < 50 + HEAD_PERSIST_EVERY);
        // Nothing unacked is lost, and ids are stable.
        assert_eq!(again[again.len() - 50..], got[150..]);
        assert_eq!(again[0], got[200 - again.len()]);
    }

    #[test]
    fn second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(matches!(
            Spool::open(dir.path(), 1 << 20),
            Err(SpoolError::Locked { .. })
        ));
        drop(s);
        Spool::open(dir.path(), 1 << 20).unwrap();
    }

    #[test]
    fn creates_directory_0750_and_names_paths_in_errors() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/spool");
        drop(Spool::open(&sub, 1 << 20).unwrap());
        let mode = fs::metadata(&sub).unwrap().permissions().mode();
        // 0o750 less the umask.
        assert_eq!(mode & 0o777 & !0o750, 0);
        let file = dir.path().join("file");
        fs::write(&file, b"x").unwrap();
        let e = Spool::open(&file, 1 << 20).err().unwrap();
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
        // The I/O error is in the message, not repeated as the source.
        assert!(std::error::Error::source(&e).is_none());
    }

    #[test]
    fn unreadable_head_resends_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..5 {
            s.append(&rec(i)).unwrap();
        }
        let got = drain(&mut s);
        s.ack(got[0].0).unwrap();
        drop(s);
        fs::write(dir.path().join(HEAD_FILE), b"nonsense").unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(drain(&mut s), got);
    }

    #[test]
    fn lowered_limit_drops_oldest_at_open() {
        let dir = tempfile::tempdir().unwrap();
        // 16 KiB segments, two files.
        let mut s = Spool::open(dir.path(), 32 * 1024).unwrap();
        for i in 0..400 {
            assert_eq!(s.append(&rec(i)).unwrap(), 0);
        }
        drop(s);
        assert_eq!(segment_files(dir.path()).len(), 2);
        let mut s = Spool::open(dir.path(), 9000).unwrap();
        assert!(s.dropped_at_open() > 0);
        assert!(s.disk_bytes() <= 9000);
        assert_eq!(segment_files(dir.path()).len(), 1);
        assert_eq!(s.len() as u64 + s.dropped_at_open(), 400);
        let got = drain(&mut s);
        assert_eq!(got.last().unwrap().1, rec(399));
    }

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    #[test]
    fn decode_segment_never_panics_on_garbage() {
        let mut rng = Lcg(0x5eed);
        // Random bytes, often starting with the magic and small lengths.
        for _ in 0..20_000 {
            let n = (rng.next() % 96) as usize;
            let mut b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            if n > 0 && rng.next() & 1 == 0 {
                b[0] = MAGIC;
            }
            if n > 4 && rng.next() & 1 == 0 {
                b[1..5].copy_from_slice(&((rng.next() % 64) as u32).to_le_bytes());
            }
            let d = decode_segment(&b);
            assert!(d.valid_len <= b.len());
        }
        // A valid segment, mutated and truncated everywhere.
        let mut seg = Vec::new();
        for i in 1..8u64 {
            seg.extend(encode_frame(i, &rec(i)));
        }
        assert_eq!(decode_segment(&seg).records.len(), 7);
        for cut in 0..seg.len() {
            let d = decode_segment(&seg[..cut]);
            assert!(d.valid_len <= cut);
            assert_ne!(d.end, SegmentEnd::Corrupt, "a cut is torn, not corrupt");
        }
        for _ in 0..20_000 {
            let mut m = seg.clone();
            for _ in 0..1 + rng.next() % 3 {
                let i = (rng.next() as usize) % m.len();
                m[i] = rng.next() as u8;
            }
            let d = decode_segment(&m);
            assert!(d.valid_len <= m.len());
            assert!(d.records.windows(2).all(|w| w[0].id < w[1].id));
        }
        // A huge length is torn, not an allocation.
        let mut huge = vec![MAGIC];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[1; 12]);
        assert_eq!(decode_segment(&huge).end, SegmentEnd::Torn);
    }

    /// Random operations against a plain in-memory model, with small
    /// segments so that rolling and deleting happen (the limit is large
    /// enough that nothing is dropped).
    #[test]
    fn random_operations_match_a_model() {
        let dir = tempfile::tempdir().unwrap();
        let limit = 1 << 20;
        let open = || {
            let mut s = Spool::open(dir.path(), limit).unwrap();
            s.segment_target = 1024;
            s
        };
        let mut rng = Lcg(7);
        let mut s = open();
        // Every record appended, by id; the ids queued; those handed out.
        let mut all: Vec<(u64, Record)> = Vec::new();
        let mut queued: Vec<u64> = Vec::new();
        let mut handed: Vec<u64> = Vec::new();
        let mut n = 0;
        let mut max_segments = 0;
        for step in 0..4000 {
            match rng.next() % 12 {
                0..=3 => {
                    let id = s.next_id;
                    assert_eq!(s.append(&rec(n)).unwrap(), 0);
                    all.push((id, rec(n)));
                    queued.push(id);
                    n += 1;
                }
                4..=6 => {
                    let got = s.next_unsent().unwrap();
                    let expect = queued.iter().find(|id| !handed.contains(id)).copied();
                    assert_eq!(got.as_ref().map(|g| g.0), expect, "step {step}");
                    if let Some((id, r)) = got {
                        let k = all.binary_search_by_key(&id, |a| a.0).unwrap();
                        assert_eq!(r, all[k].1);
                        handed.push(id);
                    }
                }
                7..=8 => {
                    // Mostly acks of handed-out records, sometimes a late
                    // ack of one not handed out since a rewind.
                    let pool = if rng.next() & 3 == 0 {
                        &queued
                    } else {
                        &handed
                    };
                    if !pool.is_empty() {
                        let id = pool[(rng.next() as usize) % pool.len()];
                        s.ack(id).unwrap();
                        queued.retain(|&q| q != id);
                    }
                }
                9 => {
                    s.rewind();
                    handed.clear();
                }
                10 => s.sync().unwrap(),
                _ => {
                    // A clean reopen resends everything from the head on:
                    // records acked after a gap come back (duplicates).
                    let head = s.head_id();
                    drop(s);
                    s = open();
                    queued = all.iter().map(|a| a.0).filter(|&id| id >= head).collect();
                    handed.clear();
                }
            }
            check(&s);
            max_segments = max_segments.max(s.segments.len());
            assert_eq!(s.len(), queued.len(), "step {step}");
            let unsent = queued.iter().filter(|id| !handed.contains(id)).count();
            assert_eq!(s.unsent(), unsent, "step {step}");
        }
        assert!(max_segments > 3);
        // Every segment file on disk is one the spool knows.
        assert_eq!(segment_files(dir.path()).len(), s.segments.len());
    }
}
