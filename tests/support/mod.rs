//! The harness: temp dirs, running the real binaries, and assertions that show the child's
//! output when they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A binary of this package, built by cargo for the tests.
pub(crate) fn bin(name: &str) -> PathBuf {
    match name {
        "certgen" => PathBuf::from(env!("CARGO_BIN_EXE_certgen")),
        "ws-proxy" => PathBuf::from(env!("CARGO_BIN_EXE_ws-proxy")),
        "ws-client" => PathBuf::from(env!("CARGO_BIN_EXE_ws-client")),
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

/// A child process of ours (ws-proxy, ws-client), killed (by PID) when dropped.
pub(crate) struct Daemon {
    child: std::process::Child,
    pub(crate) addr: std::net::SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    lines: std::sync::mpsc::Receiver<String>,
}

/// The ws-proxy daemon.
pub(crate) type ProxyProcess = Daemon;

impl Daemon {
    /// Starts `ws-proxy` with `args` in `dir` and waits for its `listening on` line. Unless
    /// `args` choose one, the admin endpoint takes a free port (its default port is fixed).
    #[track_caller]
    pub(crate) fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut args = args.to_vec();
        if !args.contains(&"--admin-bind") {
            args.extend(["--admin-bind", "127.0.0.1:0"]);
        }
        Daemon::spawn("ws-proxy", dir, &args, env, "listening on ")
    }

    /// The address of the proxy's admin endpoint, from its log.
    #[track_caller]
    pub(crate) fn admin(&mut self) -> std::net::SocketAddr {
        const LINE: &str = "admin endpoint on ";
        let logged = self.log().lines().find(|l| l.contains(LINE)).map(str::to_owned);
        let line = logged.unwrap_or_else(|| self.wait_for(LINE));
        let after = line.split("://").nth(1).unwrap_or_default();
        let addr: String =
            after.chars().take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c)).collect();
        addr.parse().unwrap_or_else(|_| panic!("bad admin address in {line:?}"))
    }

    /// Starts one of our binaries and waits for a stderr line containing `ready`; when that
    /// line says `listening on <addr>`, `addr` is that address.
    #[track_caller]
    pub(crate) fn spawn(name: &str, dir: &Path, args: &[&str], env: &[(&str, &str)], ready: &str) -> Daemon {
        let mut command = Command::new(bin(name));
        command.args(args).envs(env.iter().copied());
        Daemon::spawn_command(name, command, dir, ready)
    }

    /// Like [`Daemon::spawn`], for a command made by the caller (a shell that sets a limit
    /// first, say) that runs `name`.
    #[track_caller]
    pub(crate) fn spawn_command(name: &str, mut command: Command, dir: &Path, ready: &str) -> Daemon {
        let mut child = command
            .env_remove("RUST_LOG")
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, lines) = std::sync::mpsc::channel();
        let sink = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut process = Daemon { child, addr: "0.0.0.0:0".parse().unwrap(), log, lines };
        let line = process.wait_for(ready);
        if let Some(after) = line.split("listening on ").nth(1) {
            let addr: String =
                after.chars().take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c)).collect();
            process.addr = addr.parse().unwrap_or_else(|_| panic!("bad address in {line:?}"));
        }
        process
    }

    /// Writes a line to the child's stdin.
    pub(crate) fn type_line(&mut self, line: &str) {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().expect("stdin is piped");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes the child's stdin (end of input).
    pub(crate) fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// The next line the child writes to stdout (at most 10 s).
    #[track_caller]
    pub(crate) fn stdout_line(&mut self) -> String {
        use std::io::BufRead as _;
        let stdout = self.child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send((line, reader.into_inner()));
        });
        let (line, stdout) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no stdout line\n--- stderr\n{}", self.log()));
        self.child.stdout = Some(stdout);
        line
    }

    /// Waits (at most 10 s) for a stderr line containing `needle`; returns it.
    #[track_caller]
    pub(crate) fn wait_for(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no stderr line with {needle:?}\n--- stderr\n{}", self.log()),
            }
        }
    }

    /// Everything the proxy wrote to stderr so far.
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`) to the child.
    pub(crate) fn signal(&self, name: &str) {
        let status =
            Command::new("kill").args([&format!("-{name}"), &self.pid().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits (at most 15 s) for the child to exit; returns its exit code.
    #[track_caller]
    pub(crate) fn wait_exit(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(std::time::Instant::now() < deadline, "the child did not exit\n{}", self.log());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
    pub(crate) fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
