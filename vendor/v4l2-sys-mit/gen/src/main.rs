//! Writes the V4L2 bindings of one target for vendor/v4l2-sys-mit, with the
//! bindgen options of upstream v4l2-sys-mit 0.3.0's build.rs:
//!
//!     bindgen::Builder::default().header("wrapper.h").generate()
//!
//! plus the clang arguments that the build script got for a cross build
//! (`--target=`, which bindgen added from cargo's TARGET, and `--sysroot=`,
//! which came from BINDGEN_EXTRA_CLANG_ARGS_<target>). Only the formatting of
//! the output differs: prettyplease instead of rustfmt.
//!
//! Run by ../regenerate.sh:
//!
//!     v4l2-sys-mit-gen WRAPPER_H CLANG_TARGET SYSROOT OUT_FILE [HEADER_LINE]...
//!
//! HEADER_LINEs are written, each as a `// ` comment, after bindgen's own
//! first line.

use std::{env, fs, process::ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!(
            "usage: v4l2-sys-mit-gen WRAPPER_H CLANG_TARGET SYSROOT OUT_FILE [HEADER_LINE]..."
        );
        return ExitCode::from(2);
    }
    let (wrapper, target, sysroot, out) = (&args[0], &args[1], &args[2], &args[3]);

    // Builder::default() reads BINDGEN_EXTRA_CLANG_ARGS[_<TARGET>] from the
    // environment, and bindgen reads TARGET: only the arguments below may
    // shape the output.
    for (key, _) in env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("BINDGEN_") || k == "TARGET" {
            env::remove_var(&key);
        }
    }

    let bindings = match bindgen::Builder::default()
        .header(wrapper.as_str())
        .clang_arg(format!("--target={target}"))
        .clang_arg(format!("--sysroot={sysroot}"))
        .formatter(bindgen::Formatter::None)
        .generate()
    {
        Ok(b) => b,
        Err(e) => {
            eprintln!("v4l2-sys-mit-gen: bindgen failed for {target}: {e}");
            return ExitCode::FAILURE;
        }
    };

    // With Formatter::None, to_string() is bindgen's header comment, a blank
    // line, then the unformatted tokens.
    let text = bindings.to_string();
    let (first, tokens) = text.split_once("\n\n").expect("bindgen's header comment");
    let file = match syn::parse_file(tokens) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("v4l2-sys-mit-gen: bindgen's output does not parse: {e}");
            return ExitCode::FAILURE;
        }
    };

    let mut s = String::new();
    s.push_str(first);
    s.push('\n');
    for line in &args[4..] {
        s.push_str("// ");
        s.push_str(line);
        s.push('\n');
    }
    s.push_str(&format!(
        "// provenance: libclang: {}\n",
        bindgen::clang_version().full
    ));
    s.push('\n');
    s.push_str(&prettyplease::unparse(&file));
    if let Err(e) = fs::write(out, s) {
        eprintln!("v4l2-sys-mit-gen: writing {out}: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
