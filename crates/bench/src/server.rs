//! What the server under test spent: CPU time and memory, read from `/proc/<pid>`.

use anyhow::{Context, Result};

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux for every architecture
/// the project targets).
const TICKS_PER_SECOND: f64 = 100.0;

/// A sample of the server's counters.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    /// User + system CPU time, in seconds.
    pub(crate) cpu_seconds: f64,
    /// The system (kernel) part of it.
    pub(crate) kernel_seconds: f64,
    /// Resident set size, in bytes.
    pub(crate) rss_bytes: u64,
    /// The highest resident set size so far (VmHWM), in bytes.
    pub(crate) rss_peak_bytes: u64,
}

/// Reads the counters of the server's processes, summed; `None` when no pid was given.
pub(crate) fn sample(pids: &[u32]) -> Result<Option<Sample>> {
    let mut total: Option<Sample> = None;
    for &pid in pids {
        let one = sample_process(pid)?;
        let sum = total.get_or_insert(Sample {
            cpu_seconds: 0.0,
            kernel_seconds: 0.0,
            rss_bytes: 0,
            rss_peak_bytes: 0,
        });
        sum.cpu_seconds += one.cpu_seconds;
        sum.kernel_seconds += one.kernel_seconds;
        sum.rss_bytes += one.rss_bytes;
        sum.rss_peak_bytes += one.rss_peak_bytes;
    }
    Ok(total)
}

/// Reads the counters of one server process.
pub(crate) fn sample_process(pid: u32) -> Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis are
    // space-separated, utime and stime being the 14th and 15th of the whole line.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks =
        |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).context("malformed /proc/<pid>/stat");
    let cpu_seconds = (ticks(11)? + ticks(12)?) as f64 / TICKS_PER_SECOND;
    let kernel_seconds = ticks(12)? as f64 / TICKS_PER_SECOND;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("no {field} in /proc/<pid>/status"))
    };
    Ok(Sample {
        cpu_seconds,
        kernel_seconds,
        rss_bytes: kib("VmRSS:")? * 1024,
        rss_peak_bytes: kib("VmHWM:")? * 1024,
    })
}

/// The server CPU per unit of work (message, handshake, connection) between two samples, in
/// microseconds.
pub(crate) fn cpu_per(before: Option<Sample>, after: Option<Sample>, n: u64) -> Option<f64> {
    let (before, after) = (before?, after?);
    (n > 0).then(|| (after.cpu_seconds - before.cpu_seconds) * 1e6 / n as f64)
}
