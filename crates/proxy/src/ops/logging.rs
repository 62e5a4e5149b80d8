//! Log output: human lines or JSON on stderr, filtered by `log.level` (or `RUST_LOG`), with
//! repeated identical lines rate-limited.
//!
//! Under systemd (journald sets `JOURNAL_STREAM` on the stderr it hands us) text lines carry
//! no timestamp, since the journal adds its own. A storm of identical events, such as bad
//! handshakes from a misconfigured fleet, must not flood the journal: past [`BURST`] lines
//! with the same text (the event and its fields; the connection's span does not count) within
//! [`WINDOW`], further ones are dropped and counted, and [`report_suppressed`] logs how many
//! were dropped once per window.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hasher;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry};

use crate::config::LogFormat;
use crate::error::{Error, Result};

/// Identical lines let through per window.
pub const BURST: u32 = 10;
/// The rate limit's window, and how often suppressed lines are reported.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Distinct lines tracked at most; past that, new lines share one allowance until the next
/// report forgets quiet ones.
const MAX_TRACKED: usize = 10_000;
/// The key the lines past [`MAX_TRACKED`] share.
const UNTRACKED: u64 = u64::MAX;

/// The process's rate limiter, once [`init`] has installed it.
static LIMITER: OnceLock<Arc<RateLimit>> = OnceLock::new();

/// Installs the process's log subscriber. Colours are used only when stderr is a terminal:
/// journald and log files should not store escape codes.
///
/// # Errors
/// [`Error::Config`] for `log.level` when the filter is invalid (and `RUST_LOG` is unset).
pub fn init(format: LogFormat, level: &str) -> Result<()> {
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(level)).map_err(|e| {
        Error::Config { key: "log.level".into(), reason: format!("invalid filter {level:?}: {e}") }
    })?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let output = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
    let output: Box<dyn Layer<Registry> + Send + Sync> = match (format, journald) {
        (LogFormat::Json, _) => output.json().boxed(),
        (LogFormat::Text, true) => output.without_time().fmt_fields(escaped_fields()).boxed(),
        (LogFormat::Text, false) => output.fmt_fields(escaped_fields()).boxed(),
    };
    let limiter = Arc::clone(LIMITER.get_or_init(|| Arc::new(RateLimit::new(BURST, WINDOW))));
    // Fails only when a subscriber is already installed, which then keeps logging.
    let _ = tracing_subscriber::registry().with(output).with(filter).with(Limit(limiter)).try_init();
    Ok(())
}

/// The text format's fields, with every control character (and the Unicode line separators
/// and bidirectional overrides) in a value written as an escape: a value that comes from a
/// peer or a certificate (a subject, a peerId, a path, a reason) cannot start a line of its
/// own, forge one, or send a terminal escape sequence. (JSON lines escape on their own.)
fn escaped_fields() -> impl for<'writer> tracing_subscriber::fmt::FormatFields<'writer> + 'static {
    use tracing_subscriber::field::MakeExt as _;
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        let raw = format!("{value:?}");
        let text = escape(&raw);
        match field.name() {
            "message" => write!(writer, "{text}"),
            name => write!(writer, "{name}={text}"),
        }
    })
    .delimited(" ")
}

/// `text` with its control characters, line separators and bidirectional overrides escaped.
fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Logs, once per [`WINDOW`], how many lines the rate limit dropped, forever. Without
/// [`init`] (a library user with its own subscriber) it does nothing and never completes.
pub async fn report_suppressed() {
    let Some(limiter) = LIMITER.get() else { return std::future::pending().await };
    let mut tick = tokio::time::interval(WINDOW);
    loop {
        tick.tick().await;
        for (line, count) in limiter.take_suppressed() {
            tracing::warn!(suppressed = count, line = %line, "identical log lines suppressed in the last window");
        }
    }
}

/// Per distinct line: how many passed in the current window, and how many were dropped.
#[derive(Debug)]
pub(crate) struct RateLimit {
    burst: u32,
    window: Duration,
    lines: Mutex<HashMap<u64, Seen>>,
}

#[derive(Debug)]
struct Seen {
    since: Instant,
    passed: u32,
    suppressed: u64,
    /// What the line is, for the report: its target and message.
    name: String,
}

impl RateLimit {
    pub(crate) fn new(burst: u32, window: Duration) -> Self {
        RateLimit { burst, window, lines: Mutex::new(HashMap::new()) }
    }

    /// Whether the line with this key may be written at `now`; `name` describes it.
    pub(crate) fn admit(&self, key: u64, now: Instant, name: impl FnOnce() -> String) -> bool {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        // Past the bound, the lines not tracked share one allowance: varied lines (a field
        // that changes with each) cannot flood the log.
        let untracked = lines.len() >= MAX_TRACKED && !lines.contains_key(&key);
        let key = if untracked { UNTRACKED } else { key };
        let seen = lines.entry(key).or_insert_with(|| {
            let name = if untracked { "distinct lines past the ones tracked".to_owned() } else { name() };
            Seen { since: now, passed: 0, suppressed: 0, name }
        });
        if now.duration_since(seen.since) >= self.window {
            seen.since = now;
            seen.passed = 0;
        }
        if seen.passed < self.burst {
            seen.passed += 1;
            true
        } else {
            seen.suppressed += 1;
            false
        }
    }

    /// The lines dropped since the last call, with their counts; forgets lines that were
    /// quiet for a whole window, so the table stays small.
    pub(crate) fn take_suppressed(&self) -> Vec<(String, u64)> {
        self.take_suppressed_at(Instant::now())
    }

    fn take_suppressed_at(&self, now: Instant) -> Vec<(String, u64)> {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let mut report = Vec::new();
        for seen in lines.values_mut() {
            if seen.suppressed > 0 {
                report.push((seen.name.clone(), std::mem::take(&mut seen.suppressed)));
            }
        }
        let window = self.window;
        lines.retain(|_, seen| now.duration_since(seen.since) < window);
        report.sort();
        report
    }
}

/// The layer that asks the [`RateLimit`] before any line is written.
struct Limit(Arc<RateLimit>);

impl<S: Subscriber> Layer<S> for Limit {
    fn event_enabled(&self, event: &Event<'_>, _cx: Context<'_, S>) -> bool {
        let mut key = LineKey(std::hash::DefaultHasher::new());
        std::hash::Hash::hash(&event.metadata().callsite(), &mut key.0);
        event.record(&mut key);
        let name = || {
            let mut message = MessageOf(String::new());
            event.record(&mut message);
            format!("{}: {}", event.metadata().target(), message.0)
        };
        self.0.admit(key.0.finish(), Instant::now(), name)
    }
}

/// Fields whose values vary from one occurrence of the same problem to the next (a peer's
/// address, an error text that carries the current time) and so do not make a line different.
const VARYING_FIELDS: [&str; 2] = ["peer", "detail"];

/// Hashes an event's fields: two events with the same callsite and values, but for
/// [`VARYING_FIELDS`], are the same line.
struct LineKey(std::hash::DefaultHasher);

impl Visit for LineKey {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if VARYING_FIELDS.contains(&field.name()) {
            return;
        }
        self.0.write(field.name().as_bytes());
        let _ = write!(HashWriter(&mut self.0), "{value:?}");
    }
}

struct HashWriter<'a>(&'a mut std::hash::DefaultHasher);

impl std::fmt::Write for HashWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.write(s.as_bytes());
        Ok(())
    }
}

/// An event's `message` field.
struct MessageOf(String);

impl Visit for MessageOf {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_lines_past_the_burst_are_counted_not_written() {
        let limit = RateLimit::new(3, Duration::from_secs(10));
        let start = Instant::now();
        let admitted = (0..10).filter(|_| limit.admit(1, start, || "storm".into())).count();
        assert_eq!(admitted, 3);
        assert!(limit.admit(2, start, || "other".into()), "another line has its own budget");
        assert_eq!(limit.take_suppressed_at(start), vec![("storm".to_owned(), 7)]);
        assert_eq!(limit.take_suppressed_at(start), vec![], "each drop is reported once");
        let later = start + Duration::from_secs(10);
        assert!(limit.admit(1, later, || "storm".into()), "a new window has a new budget");
    }

    #[test]
    fn distinct_lines_past_the_bound_share_one_allowance() {
        let limit = RateLimit::new(3, Duration::from_secs(10));
        let start = Instant::now();
        for key in 0..MAX_TRACKED as u64 {
            assert!(limit.admit(key, start, || "tracked".into()));
        }
        let admitted = (0..1000u64).filter(|n| limit.admit(1 << 40 | n, start, || "varied".into())).count();
        assert_eq!(admitted, 3, "a flood of varied lines past the bound");
        assert!(limit.admit(5, start, || "tracked".into()), "a tracked line keeps its own budget");
    }

    /// Counts the events that reach it.
    struct Written(Arc<std::sync::atomic::AtomicUsize>);

    impl<S: Subscriber> Layer<S> for Written {
        fn on_event(&self, _event: &Event<'_>, _cx: Context<'_, S>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn the_layer_drops_identical_events_and_names_them() {
        let limiter = Arc::new(RateLimit::new(3, Duration::from_secs(60)));
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(Written(Arc::clone(&written)))
            .with(Limit(Arc::clone(&limiter)));
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..10 {
                tracing::warn!(reason = "eof", "handshake failed");
            }
            for n in 0..5 {
                tracing::warn!(reason = "eof", n, "handshake failed");
            }
        });
        assert_eq!(
            written.load(std::sync::atomic::Ordering::Relaxed),
            3 + 5,
            "different fields, different lines"
        );
        let report = limiter.take_suppressed();
        assert_eq!(report, vec![(concat!(module_path!(), ": handshake failed").to_owned(), 7)]);
    }

    #[test]
    fn quiet_lines_are_forgotten() {
        let limit = RateLimit::new(1, Duration::from_secs(10));
        let start = Instant::now();
        limit.admit(1, start, || "a".into());
        limit.take_suppressed_at(start + Duration::from_secs(11));
        assert!(limit.lines.lock().unwrap().is_empty());
    }

    #[test]
    fn text_fields_from_peers_cannot_forge_lines_or_send_escapes() {
        let written = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = Arc::clone(&written);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(escaped_fields())
            .with_writer(move || Capture(Arc::clone(&sink)))
            .finish();
        let subject = "CN=evil\n2026-12-06T00:00:00Z  INFO forged line\u{1b}[31m\u{202e}";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(subject = %subject, peer_id = ?"a\rb", "joined room {}", "x\ny");
        });
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert!(
            text.contains("subject=CN=evil\\n2026-12-06T00:00:00Z  INFO forged line\\u{1b}[31m\\u{202e}"),
            "{text}"
        );
        assert!(text.contains("joined room x\\ny"), "{text}");
        assert_eq!(escape("plain text: ok"), "plain text: ok");
    }

    /// A writer into a shared buffer.
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
