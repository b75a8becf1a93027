//! The event socket through the binary: a local reader connected while
//! ferd starts receives exactly the JSON lines of stdout.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_local_reader_gets_the_same_lines_as_stdout() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("events.sock");
    let config = dir.path().join("ferd.toml");
    let text = std::fs::read_to_string(root.join("systemd/ferd.toml"))
        .unwrap()
        .replace(
            "model = \"../models/",
            &format!("model = \"{}/models/", root.display()),
        )
        .replace(
            "[events]",
            &format!("[events]\nsocket = \"{}\"", sock.display()),
        );
    std::fs::write(&config, text).unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_ferd"))
        .args(["run", "--config"])
        .arg(&config)
        .args(["--source", "examples/demo.y4m"])
        .current_dir(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferd runs");

    // The socket is bound before the models load, so a reader that
    // connects as soon as it appears is there before the first event.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stream = loop {
        if let Ok(s) = UnixStream::connect(&sock) {
            break s;
        }
        assert!(Instant::now() < deadline, "no socket at {}", sock.display());
        std::thread::sleep(Duration::from_millis(5));
    };
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let from_socket: Vec<String> = BufReader::new(stream)
        .lines()
        .map(|l| l.expect("a line before EOF"))
        .collect();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_stdout: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(from_stdout.len(), 26);
    assert_eq!(from_socket, from_stdout);
    assert!(!sock.exists(), "the socket is removed at exit");
}
