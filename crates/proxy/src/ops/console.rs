//! The web console (`GET /` on the admin endpoint): one HTML page rendered here from an
//! [`Overview`], complete without JavaScript, and its two assets (`console/`): a style sheet,
//! and a script that reads `/v1/overview` every five seconds to redraw the page and show the
//! rates between two reads.
//!
//! The page loads nothing from elsewhere and has no inline script or style, so it is served
//! under [`CONTENT_SECURITY_POLICY`]. Peers choose their `peerClass` and `peerId`, so every
//! value taken from the overview is escaped here ([`escape`]); the script sets text only
//! through `textContent`. A node may hold a million members, so no table shows more than
//! [`MAX_ROWS`] rows; the page says how many it left out.

use super::calendar::{date, utc};
use super::overview::{Counters, Overview};
use super::status::{MemberStatus, RoomStatus};

/// The `Content-Security-Policy` of the page: its script, style sheet and requests are the
/// admin endpoint's own, nothing inline runs, and no other site may frame it.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

/// The most rows a table shows (the script reads it from the table's `data-limit`).
const MAX_ROWS: usize = 1000;

/// Seconds in a day.
const DAY: i64 = 86_400;

/// `/console.css`.
const STYLE: &str = include_str!("console/console.css");

/// `/console.js`.
const SCRIPT: &str = include_str!("console/console.js");

/// The content type and body of the console's asset at `path`, if it is one.
pub(crate) fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/console.css" => Some(("text/css; charset=utf-8", STYLE)),
        "/console.js" => Some(("text/javascript; charset=utf-8", SCRIPT)),
        _ => None,
    }
}

/// The console page showing `overview`.
pub(crate) fn page(overview: &Overview) -> String {
    let expiry = Expiry {
        now: overview.now,
        window: i64::try_from(overview.expiring_within_days).unwrap_or(i64::MAX).saturating_mul(DAY),
    };
    let node = escape(&overview.node);
    let (state, readiness) =
        if overview.ready { ("ok", "ready") } else { ("bad", overview.readiness.as_str()) };
    let totals = &overview.totals;
    // The rooms not carried by the overview count one row each, at least.
    let room_rows: usize = overview.rooms.iter().map(|r| r.members.len().max(1)).sum::<usize>()
        + totals.rooms.saturating_sub(overview.rooms.len());
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ws-proxy {node}</title>
<link rel="stylesheet" href="/console.css">
<script src="/console.js" defer></script>
</head>
<body>
<header>
<h1>ws-proxy <span id="node">{node}</span></h1>
<p class="meta">version <span id="version">{version}</span> · <span id="refreshed">as of {now}</span></p>
<p id="readiness" class="state {state}">{readiness}</p>
<p id="cluster" class="cluster">{cluster}</p>
</header>
<noscript><p class="note">JavaScript is off, so this page does not refresh itself: reload it to see the node now.</p></noscript>
<p id="error" class="error" role="alert" hidden></p>
<main>
<section>
<h2>Counters</h2>
<div id="counters" class="counters">{counters}</div>
</section>
<section>
<h2>Rooms</h2>
<p id="rooms-summary" class="summary">{summary}</p>
{rooms}
</section>
<section>
<h2>Members on other nodes</h2>
{elsewhere}
</section>
<section>
<h2>Client certificates expiring within <span id="window">{days}</span> days</h2>
{expiring}
</section>
<section>
<h2>The proxy's certificate and CAs</h2>
{trust}
</section>
</main>
</body>
</html>
"#,
        version = escape(&overview.version),
        now = escape(&utc(overview.now)),
        readiness = escape(readiness),
        cluster = escape(&cluster(overview)),
        counters = counters(&overview.counters),
        summary = escape(&summary(totals.rooms, totals.members, totals.elsewhere)),
        rooms = table(
            "rooms",
            &[
                "Room",
                "Identity",
                "Peer (class, id)",
                "Address",
                "Connected since",
                "Frames in / out",
                "Bytes in / out",
                "Certificate expires",
            ],
            "no rooms",
            room_rows,
            overview.rooms.iter().flat_map(|room| rows_of_room(room, &expiry)),
        ),
        elsewhere = table(
            "elsewhere",
            &["Room", "Node", "Peer (class, id)", "Fingerprint"],
            "none",
            totals.elsewhere,
            overview.rooms.iter().flat_map(|room| {
                room.elsewhere.iter().map(|m| {
                    row(
                        "",
                        &[
                            td("", &room.id, None),
                            td("", &m.node, None),
                            td("", or_dash(m.peer_class.as_deref()), Some(or_dash(m.peer_id.as_deref()))),
                            td("fp", &m.fingerprint, None),
                        ],
                    )
                })
            }),
        ),
        days = escape(&overview.expiring_within_days.to_string()),
        expiring = table(
            "expiring",
            &["Subject", "Serial", "Fingerprint", "Expires", "Rooms", "Last seen", "Connected"],
            "none",
            totals.expiring,
            overview.expiring.iter().map(|c| {
                row(
                    "",
                    &[
                        td("", &c.subject, None),
                        td("fp", &c.serial, None),
                        td("fp", &c.fingerprint, None),
                        expiry.cell(&utc(c.not_after), c.not_after),
                        td("", &c.rooms.join(", "), None),
                        td("time", &utc(c.last_seen), None),
                        td("", if c.connected { "yes" } else { "no" }, None),
                    ],
                )
            }),
        ),
        trust = table(
            "trust",
            &["Role", "Subject", "Expires"],
            "none",
            overview.trust.len(),
            overview.trust.iter().map(|c| {
                row(
                    "",
                    &[
                        td("", &c.role, None),
                        td("", &c.subject, None),
                        expiry.cell(&utc(c.not_after), c.not_after),
                    ],
                )
            }),
        ),
    )
}

/// `text` with `&`, `<`, `>`, `"` and `'` replaced by character references, so that it reads
/// as text in an element or in a quoted attribute.
pub(crate) fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The line on the cluster under the node's name.
fn cluster(overview: &Overview) -> String {
    match &overview.cluster {
        None => "single node".to_owned(),
        Some(cluster) => {
            let nodes = if cluster.nodes.is_empty() { "none".to_owned() } else { cluster.nodes.join(", ") };
            format!(
                "cluster: redis {} · other nodes: {nodes} · notes published {}, lost {}",
                if cluster.up { "up" } else { "DOWN" },
                count(cluster.published),
                count(cluster.lost),
            )
        }
    }
}

/// The line above the rooms.
fn summary(rooms: usize, members: usize, remote: usize) -> String {
    format!(
        "{} rooms · {} members here · {} on other nodes",
        count(rooms as u64),
        count(members as u64),
        count(remote as u64)
    )
}

/// How a counter's value reads.
#[derive(Clone, Copy)]
enum Unit {
    /// A number of things.
    Count,
    /// A number of bytes.
    Bytes,
}

/// The counter boxes. Each carries its key in `/v1/overview` and its unit, for the script; those
/// whose rate the script shows have an empty `rate` element for it.
fn counters(c: &Counters) -> String {
    use Unit::{Bytes, Count};
    let list: [(&str, &str, u64, Unit, bool); 14] = [
        ("connections_open", "open connections", c.connections_open, Count, false),
        ("connections_accepted", "connections accepted", c.connections_accepted, Count, true),
        ("connections_refused", "connections refused", c.connections_refused, Count, false),
        ("joins", "joins", c.joins, Count, false),
        ("frames_in", "frames in", c.frames_in, Count, true),
        ("frames_out", "frames out", c.frames_out, Count, true),
        ("bytes_in", "bytes in", c.bytes_in, Bytes, true),
        ("bytes_out", "bytes out", c.bytes_out, Bytes, true),
        ("handshakes_full", "full TLS handshakes", c.handshakes_full, Count, false),
        ("handshakes_resumed", "resumed TLS handshakes", c.handshakes_resumed, Count, false),
        ("handshake_failures", "handshake failures", c.handshake_failures, Count, true),
        ("upgrade_refusals", "upgrades refused", c.upgrade_refusals, Count, false),
        ("conn_errors", "CONN:ERRORs sent", c.conn_errors, Count, false),
        ("slow_consumers", "slow consumers closed", c.slow_consumers, Count, false),
    ];
    list.iter()
        .map(|&(key, label, value, unit, rated)| {
            let (unit, shown) = match unit {
                Count => ("count", count(value)),
                Bytes => ("bytes", bytes(value)),
            };
            let rate = if rated { r#"<span class="rate"></span>"# } else { "" };
            format!(
                r#"<div class="counter" data-counter="{key}" data-unit="{unit}"><span class="label">{}</span><span class="value">{}</span>{rate}</div>"#,
                escape(label),
                escape(&shown),
            )
        })
        .collect()
}

/// The rows of one room: one per member here, the first also holding the room's cell; or one
/// saying there is none.
fn rows_of_room(room: &RoomStatus, expiry: &Expiry) -> Vec<String> {
    let held = (room.held_messages > 0)
        .then(|| format!("{} held, {}", count(room.held_messages as u64), bytes(room.held_bytes as u64)));
    let room_cell = format!(
        r#"<td class="room" rowspan="{}">{}</td>"#,
        room.members.len().max(1),
        content(&room.id, held.as_deref())
    );
    if room.members.is_empty() {
        return vec![row(
            "first",
            &[room_cell, r#"<td class="empty" colspan="7">no member on this node</td>"#.into()],
        )];
    }
    room.members
        .iter()
        .enumerate()
        .map(|(i, member)| {
            let mut cells = member_cells(member, expiry);
            if i == 0 {
                cells.insert(0, room_cell.clone());
            }
            row(if i == 0 { "first" } else { "" }, &cells)
        })
        .collect()
}

/// A member's cells, but the room's.
fn member_cells(m: &MemberStatus, expiry: &Expiry) -> Vec<String> {
    let since = i64::try_from(m.connected_since).unwrap_or(i64::MAX);
    vec![
        td("", &m.subject, Some(&short(&m.fingerprint))),
        td("", or_dash(m.peer_class.as_deref()), Some(or_dash(m.peer_id.as_deref()))),
        td("", &m.address, None),
        td("time", &utc(since), Some(&format!("for {}", duration(expiry.now.saturating_sub(since))))),
        td("num", &format!("{} / {}", count(m.frames_in), count(m.frames_out)), None),
        td("num", &format!("{} / {}", bytes(m.bytes_in), bytes(m.bytes_out)), None),
        expiry.cell(&date(m.not_after), m.not_after),
    ]
}

/// A table: its column `headings`, then at most [`MAX_ROWS`] of the `total` rows, then a row
/// saying how many were left out; or a row saying `empty` when there are none.
fn table(
    id: &str,
    headings: &[&str],
    empty: &str,
    total: usize,
    rows: impl Iterator<Item = String>,
) -> String {
    let head: String = headings.iter().map(|h| format!("<th>{}</th>", escape(h))).collect();
    let shown: Vec<String> = rows.take(MAX_ROWS).collect();
    let columns = headings.len();
    let last = if total == 0 {
        row("", &[format!(r#"<td class="empty" colspan="{columns}">{}</td>"#, escape(empty))])
    } else if shown.len() < total {
        let note = format!(
            "{} of {} rows shown; /v1/rooms and /v1/certificates have them all",
            count(shown.len() as u64),
            count(total as u64)
        );
        row("", &[format!(r#"<td class="more" colspan="{columns}">{}</td>"#, escape(&note))])
    } else {
        String::new()
    };
    format!(
        r#"<div class="scroll"><table id="{id}" data-empty="{}" data-limit="{MAX_ROWS}"><thead><tr>{head}</tr></thead><tbody>{}{last}</tbody></table></div>"#,
        escape(empty),
        shown.concat(),
    )
}

/// A row of `cells` (already markup), with `class` (ours, never data) when not empty.
fn row(class: &str, cells: &[String]) -> String {
    if class.is_empty() {
        format!("<tr>{}</tr>", cells.concat())
    } else {
        format!(r#"<tr class="{class}">{}</tr>"#, cells.concat())
    }
}

/// A cell showing `text`, and `detail` below it, both escaped; `class` (ours, never data) when
/// not empty.
fn td(class: &str, text: &str, detail: Option<&str>) -> String {
    if class.is_empty() {
        format!("<td>{}</td>", content(text, detail))
    } else {
        format!(r#"<td class="{class}">{}</td>"#, content(text, detail))
    }
}

/// `text`, and `detail` below it in smaller type, both escaped.
fn content(text: &str, detail: Option<&str>) -> String {
    match detail {
        Some(detail) => format!(r#"{}<div class="detail">{}</div>"#, escape(text), escape(detail)),
        None => escape(text),
    }
}

/// The first 16 digits of a fingerprint, enough to tell members apart (the tables of
/// certificates show it whole).
fn short(fingerprint: &str) -> String {
    match fingerprint.get(..16) {
        Some(start) if fingerprint.len() > 16 => format!("{start}…"),
        _ => fingerprint.to_owned(),
    }
}

/// A value from a HELLO, or a dash when the peer did not send it.
fn or_dash(value: Option<&str>) -> &str {
    value.unwrap_or("—")
}

/// How certificate expiry reads at one moment.
struct Expiry {
    /// Now, seconds since the Unix epoch.
    now: i64,
    /// The warning window, in seconds.
    window: i64,
}

impl Expiry {
    /// A cell showing `shown` (the time of `not_after`) and the time left, marked `expired`
    /// or, within the window, `soon`.
    fn cell(&self, shown: &str, not_after: i64) -> String {
        let left = not_after.saturating_sub(self.now);
        let class = if left <= 0 {
            "expires expired"
        } else if left <= self.window {
            "expires soon"
        } else {
            "expires"
        };
        td(class, shown, Some(&time_left(left)))
    }
}

/// How `left` seconds until a certificate's notAfter read.
fn time_left(left: i64) -> String {
    match left.div_euclid(DAY) {
        _ if left <= 0 => "expired".to_owned(),
        0 => "less than a day left".to_owned(),
        1 => "1 day left".to_owned(),
        days => format!("{days} days left"),
    }
}

/// A duration of `seconds`, to the minute or coarser.
fn duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / DAY, s % DAY / 3600),
    }
}

/// `n` with its thousands separated by commas.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// `n` bytes in B, KiB, MiB, GiB or TiB, to one decimal.
fn bytes(n: u64) -> String {
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    for unit in ["KiB", "MiB", "GiB"] {
        value /= 1024.0;
        if value < 1024.0 {
            return format!("{value:.1} {unit}");
        }
    }
    format!("{:.1} TiB", value / 1024.0)
}

#[cfg(test)]
mod tests;
