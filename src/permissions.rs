//! Warnings about files ferd reads or keeps that are more open than they
//! should be: the config, the MQTT credentials and TLS client key, the
//! spool's directory and files, and (against substitution only) the CA and
//! client certificate.
//!
//! The one rule, [`loose_bits`]: every permission bit outside the allowed
//! mode of the file's [`Kind`] is too much. A secret file may be 0640 at
//! most (owner read/write, group read), a spool directory 0750, a public
//! file (a certificate) 0644. So group write, any bit for others on a
//! secret, any exec bit on a file, setuid/setgid/sticky on a file, all
//! count.
//!
//! A loose file draws a `log::warn!` naming it, its mode in octal and the
//! `chmod` that fixes it, once per path for the life of the process (a
//! config reload reads the same files again and stays quiet). It is a
//! warning, not an error: a unit in the field that refused to start over a
//! mode would stop detecting anything, which is worse than running with a
//! file a local user could read; the installed files (the `.deb`'s
//! postinst) are 0640 already, so the warning points at a hand-made change.

use std::collections::BTreeSet;
use std::fs::Metadata;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What a file is, which sets the most open mode it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A file holding secrets or leading to them (the config names the
    /// credentials file; spool records are what the camera saw): 0640.
    Secret,
    /// A directory of secret files: 0750 (the exec bits let owner and
    /// group enter it). Setgid and sticky are not checked on a directory:
    /// they decide a new file's group and who may delete, not who may read.
    Directory,
    /// A public file whose contents decide whom ferd trusts (the CA file,
    /// the client certificate): anyone may read it, but whoever can write
    /// it could swap in their own CA. 0644.
    Public,
}

impl Kind {
    /// The most open mode allowed.
    pub fn allowed(self) -> u32 {
        match self {
            Kind::Secret => 0o640,
            Kind::Directory => 0o750,
            Kind::Public => 0o644,
        }
    }

    /// The mode bits that are checked at all.
    fn checked(self) -> u32 {
        match self {
            Kind::Directory => 0o777,
            Kind::Secret | Kind::Public => 0o7777,
        }
    }
}

/// The bits of `mode` (as `st_mode`, file type bits ignored) outside what
/// `kind` allows; 0 when the mode is fine.
pub fn loose_bits(mode: u32, kind: Kind) -> u32 {
    mode & kind.checked() & !kind.allowed()
}

/// The warning for `path` with `mode`, or None when the mode is fine.
/// `what` says what the file is to ferd ("config", "credentials", ...).
pub fn warning(path: &Path, what: &str, mode: u32, kind: Kind) -> Option<String> {
    let loose = loose_bits(mode, kind);
    if loose == 0 {
        return None;
    }
    let mut why = Vec::new();
    if loose & 0o007 != 0 {
        why.push("others have access");
    }
    if loose & 0o020 != 0 {
        why.push("its group can write it");
    }
    if loose & 0o110 != 0 {
        why.push("it is executable");
    }
    if loose & 0o7000 != 0 {
        why.push("it has a setuid, setgid or sticky bit");
    }
    // Only the loose bits go: 0644 becomes 0640, 0604 becomes 0600.
    let fixed = mode & 0o7777 & !loose;
    Some(format!(
        "{what} {p} has mode {mode:04o}, looser than {allowed:04o} ({why}); \
         run: chmod {fixed:04o} {p}",
        p = path.display(),
        mode = mode & 0o7777,
        allowed = kind.allowed(),
        why = why.join(", "),
    ))
}

/// Paths already warned about in this process.
static WARNED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Whether `path` is not yet in `warned` (and now is).
fn first_time(warned: &Mutex<BTreeSet<PathBuf>>, path: &Path) -> bool {
    // A panic elsewhere while holding the lock leaves a set that is still
    // valid; a lost warning would be worse than a repeated one.
    let mut set = warned.lock().unwrap_or_else(|e| e.into_inner());
    set.insert(path.to_path_buf())
}

/// Warns (once per path per process) when `meta`, the metadata of the file
/// or directory at `path` as ferd opened it, is looser than `kind` allows.
pub fn warn_if_loose_meta(path: &Path, what: &str, kind: Kind, meta: &Metadata) {
    if let Some(message) = warning(path, what, meta.permissions().mode(), kind) {
        if first_time(&WARNED, path) {
            log::warn!("{message}");
        }
    }
}

/// [`warn_if_loose_meta`] for a path (symlinks followed: what counts is
/// the file read). A path that cannot be inspected draws nothing here:
/// reading it reports that error.
pub fn warn_if_loose(path: &Path, what: &str, kind: Kind) {
    if let Ok(meta) = std::fs::metadata(path) {
        warn_if_loose_meta(path, what, kind, &meta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_allow_0640_and_anything_tighter() {
        for mode in [0o640, 0o600, 0o400, 0o440, 0o000, 0o200, 0o100640] {
            assert_eq!(loose_bits(mode, Kind::Secret), 0, "{mode:o}");
        }
    }

    #[test]
    fn secret_files_flag_every_bit_outside_0640() {
        let cases = [
            (0o644, 0o004),
            (0o660, 0o020),
            (0o666, 0o026),
            (0o641, 0o001),
            (0o642, 0o002),
            (0o740, 0o100),
            (0o650, 0o010),
            (0o755, 0o115),
            (0o777, 0o137),
            (0o4640, 0o4000),
            (0o2640, 0o2000),
            (0o1640, 0o1000),
            (0o100644, 0o004),
        ];
        for (mode, loose) in cases {
            assert_eq!(loose_bits(mode, Kind::Secret), loose, "{mode:o}");
        }
        // Each of the nine permission bits on its own.
        for bit in 0..9 {
            let mode = 1 << bit;
            assert_eq!(loose_bits(mode, Kind::Secret) == 0, mode & !0o640 == 0);
        }
    }

    #[test]
    fn directories_allow_0750_and_ignore_setgid_and_sticky() {
        for mode in [0o750, 0o700, 0o2750, 0o1750, 0o40750] {
            assert_eq!(loose_bits(mode, Kind::Directory), 0, "{mode:o}");
        }
        assert_eq!(loose_bits(0o755, Kind::Directory), 0o005);
        assert_eq!(loose_bits(0o770, Kind::Directory), 0o020);
        assert_eq!(loose_bits(0o777, Kind::Directory), 0o027);
    }

    #[test]
    fn public_files_may_be_read_by_all_but_written_by_the_owner_only() {
        assert_eq!(loose_bits(0o644, Kind::Public), 0);
        assert_eq!(loose_bits(0o444, Kind::Public), 0);
        assert_eq!(loose_bits(0o664, Kind::Public), 0o020);
        assert_eq!(loose_bits(0o646, Kind::Public), 0o002);
        assert_eq!(loose_bits(0o755, Kind::Public), 0o111);
    }

    #[test]
    fn the_warning_names_the_file_its_mode_and_the_fix() {
        let p = Path::new("/etc/ferd/ferd.toml");
        assert_eq!(warning(p, "config", 0o100640, Kind::Secret), None);
        let w = warning(p, "config", 0o100644, Kind::Secret).unwrap();
        assert_eq!(
            w,
            "config /etc/ferd/ferd.toml has mode 0644, looser than 0640 (others have access); \
             run: chmod 0640 /etc/ferd/ferd.toml"
        );
        let w = warning(p, "credentials", 0o777, Kind::Secret).unwrap();
        assert!(w.contains("has mode 0777"), "{w}");
        assert!(w.contains("others have access"), "{w}");
        assert!(w.contains("its group can write it"), "{w}");
        assert!(w.contains("it is executable"), "{w}");
        assert!(w.ends_with("chmod 0640 /etc/ferd/ferd.toml"), "{w}");
        // Only the loose bits are taken away.
        let w = warning(p, "credentials", 0o604, Kind::Secret).unwrap();
        assert!(w.ends_with("chmod 0600 /etc/ferd/ferd.toml"), "{w}");
        let w = warning(Path::new("/s"), "spool directory", 0o40777, Kind::Directory).unwrap();
        assert!(w.ends_with("chmod 0750 /s"), "{w}");
        let w = warning(p, "key_file", 0o4640, Kind::Secret).unwrap();
        assert!(w.contains("setuid"), "{w}");
        assert!(w.ends_with("chmod 0640 /etc/ferd/ferd.toml"), "{w}");
    }

    #[test]
    fn each_path_is_warned_about_once() {
        let warned = Mutex::new(BTreeSet::new());
        assert!(first_time(&warned, Path::new("/a")));
        assert!(!first_time(&warned, Path::new("/a")));
        assert!(first_time(&warned, Path::new("/b")));
        assert!(!first_time(&warned, Path::new("/b")));
    }
}
