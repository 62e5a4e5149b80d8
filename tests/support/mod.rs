//! The harness: temp dirs, running the real binaries, and assertions that show the child's
//! output when they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A binary of this package, built by cargo for the tests.
pub(crate) fn bin(name: &str) -> PathBuf {
    match name {
        "certgen" => PathBuf::from(env!("CARGO_BIN_EXE_certgen")),
        other => panic!("unknown binary {other}"),
    }
}

/// The result of a finished command, with its output kept for messages.
pub(crate) struct Run {
    pub(crate) output: Output,
    pub(crate) cmdline: String,
}

impl Run {
    pub(crate) fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout\n{}--- stderr\n{}",
            self.cmdline,
            self.output.status,
            self.stdout(),
            self.stderr()
        )
    }

    #[track_caller]
    pub(crate) fn success(self) -> Self {
        assert!(self.output.status.success(), "expected success\n{}", self.describe());
        self
    }

    #[track_caller]
    pub(crate) fn code(self, expected: i32) -> Self {
        assert_eq!(self.output.status.code(), Some(expected), "unexpected exit status\n{}", self.describe());
        self
    }

    #[track_caller]
    pub(crate) fn stderr_has(self, needle: &str) -> Self {
        assert!(self.stderr().contains(needle), "stderr lacks {needle:?}\n{}", self.describe());
        self
    }

    #[track_caller]
    pub(crate) fn stdout_has(self, needle: &str) -> Self {
        assert!(self.stdout().contains(needle), "stdout lacks {needle:?}\n{}", self.describe());
        self
    }
}

/// Runs `program` with `args` in `dir`, stdin closed, and collects its output.
#[track_caller]
pub(crate) fn run_in(dir: &Path, program: &Path, args: &[&str]) -> Run {
    let cmdline = format!("{} {}", program.display(), args.join(" "));
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmdline}: {e}"));
    Run { output, cmdline }
}

/// Runs one of this package's binaries in `dir`.
#[track_caller]
pub(crate) fn run_bin(dir: &Path, name: &str, args: &[&str]) -> Run {
    run_in(dir, &bin(name), args)
}

/// Runs `openssl` in `dir`.
#[track_caller]
pub(crate) fn openssl(dir: &Path, args: &[&str]) -> Run {
    run_in(dir, Path::new("openssl"), args)
}

/// The permission bits of a file.
pub(crate) fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}
