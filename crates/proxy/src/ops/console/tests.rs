//! The console's tests: how values read, the page it renders (escaped), and its assets.

use super::*;
use crate::ops::certificates::CertificateStatus;
use crate::ops::overview::{ClusterOverview, Totals, TrustedCertificate};
use crate::ops::status::RemoteMemberStatus;

#[test]
fn escape_replaces_the_five_characters() {
    assert_eq!(
        escape(r#"<a href="x">Tom & Jerry's</a>"#),
        "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&#39;s&lt;/a&gt;"
    );
    assert_eq!(escape("plain CN=gw-1, O=Test — ünïcode"), "plain CN=gw-1, O=Test — ünïcode");
    assert_eq!(escape("&amp;"), "&amp;amp;");
    assert_eq!(escape(""), "");
}

#[test]
fn numbers_and_durations_read_well() {
    assert_eq!(count(0), "0");
    assert_eq!(count(999), "999");
    assert_eq!(count(1000), "1,000");
    assert_eq!(count(1_234_567), "1,234,567");
    assert_eq!(bytes(1023), "1023 B");
    assert_eq!(bytes(1536), "1.5 KiB");
    assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
    assert_eq!(bytes(u64::MAX), "16777216.0 TiB");
    assert_eq!(duration(-5), "0 s");
    assert_eq!(duration(59), "59 s");
    assert_eq!(duration(3599), "59 min");
    assert_eq!(duration(3 * 3600 + 125), "3 h 2 min");
    assert_eq!(duration(2 * DAY + 3600), "2 d 1 h");
    assert_eq!(time_left(0), "expired");
    assert_eq!(time_left(-3 * DAY), "expired");
    assert_eq!(time_left(10), "less than a day left");
    assert_eq!(time_left(DAY + 10), "1 day left");
    assert_eq!(time_left(29 * DAY + 10), "29 days left");
}

const NOW: i64 = 1_750_000_000;

fn member(subject: &str, class: &str, id: &str, not_after: i64) -> MemberStatus {
    MemberStatus {
        subject: subject.into(),
        fingerprint: "AB".repeat(32),
        peer_class: Some(class.into()),
        peer_id: Some(id.into()),
        connected_since: (NOW - 3700) as u64,
        frames_in: 12_345,
        bytes_in: 2048,
        frames_out: 7,
        bytes_out: 100,
        address: "192.0.2.7:50123".into(),
        conflicts_survived: 0,
        not_after,
    }
}

fn overview() -> Overview {
    Overview {
        version: "1.2.3".into(),
        node: "node-a".into(),
        now: NOW,
        ready: true,
        readiness: "ready".into(),
        cluster: Some(ClusterOverview { up: true, nodes: vec!["node-b".into()], published: 10, lost: 0 }),
        counters: Counters { frames_in: 1_000_000, bytes_out: 3 * 1024 * 1024, ..Counters::default() },
        rooms: vec![
            RoomStatus {
                id: "gw/1".into(),
                held_messages: 0,
                held_bytes: 0,
                members: vec![
                    member("CN=manager,O=Test", "manager", "m-1", NOW + 90 * DAY),
                    member("CN=gateway,O=Test", "<script>alert(1)</script>", "g-1", NOW + 5 * DAY),
                ],
                elsewhere: vec![RemoteMemberStatus {
                    node: "node-b".into(),
                    fingerprint: "CD".repeat(32),
                    peer_class: Some("dhcp".into()),
                    peer_id: None,
                }],
            },
            RoomStatus {
                id: "held & alone".into(),
                held_messages: 2,
                held_bytes: 300,
                members: vec![],
                elsewhere: vec![],
            },
        ],
        totals: Totals { rooms: 2, members: 2, elsewhere: 1, expiring: 1 },
        expiring_within_days: 30,
        expiring: vec![CertificateStatus {
            subject: "CN=gateway,O=Test".into(),
            serial: "0A1B".into(),
            fingerprint: "EF".repeat(32),
            not_after: NOW + 5 * DAY,
            rooms: vec!["gw/1".into()],
            last_seen: NOW,
            connected: true,
        }],
        trust: vec![
            TrustedCertificate { role: "server".into(), subject: "CN=proxy".into(), not_after: NOW - 10 },
            TrustedCertificate { role: "ca".into(), subject: "CN=root".into(), not_after: NOW + 3650 * DAY },
        ],
    }
}

#[test]
fn the_page_shows_the_members_their_expiry_and_escapes_what_peers_say() {
    let page = page(&overview());
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    for expected in [
        r#"<link rel="stylesheet" href="/console.css">"#,
        r#"<script src="/console.js" defer></script>"#,
        r#"<meta name="viewport""#,
        "<noscript>",
        r#"<span id="node">node-a</span>"#,
        r#"<p id="readiness" class="state ok">ready</p>"#,
        "cluster: redis up · other nodes: node-b · notes published 10, lost 0",
        r#"<td>CN=manager,O=Test<div class="detail">ABABABABABABABAB…</div>"#,
        "<td>CN=gateway,O=Test<div",
        "manager<div class=\"detail\">m-1</div>",
        "192.0.2.7:50123",
        r#"<td class="time">2025-06-15 14:05:00 UTC<div class="detail">for 1 h 1 min</div>"#,
        "12,345 / 7",
        "2.0 KiB / 100 B",
        r#"<td class="expires">2025-09-13<div class="detail">90 days left</div></td>"#,
        r#"<td class="expires soon">2025-06-20<div class="detail">5 days left</div></td>"#,
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        r#"rowspan="2""#,
        "held &amp; alone<div class=\"detail\">2 held, 300 B</div>",
        "no member on this node",
        "<td>node-b</td><td>dhcp<div class=\"detail\">—</div></td>",
        "2 rooms · 2 members here · 1 on other nodes",
        r#"data-counter="frames_in" data-unit="count"><span class="label">frames in</span><span class="value">1,000,000</span><span class="rate"></span>"#,
        r#"<span class="value">3.0 MiB</span>"#,
        r#"<td class="fp">0A1B</td>"#,
        r#"<td class="expires soon">2025-06-20 15:06:40 UTC<div class="detail">5 days left</div></td>"#,
        r#"<td class="expires expired">2025-06-15 15:06:30 UTC<div class="detail">expired</div></td>"#,
        r#"<td>ca</td><td>CN=root</td><td class="expires">"#,
        r#"<span id="window">30</span>"#,
    ] {
        assert!(page.contains(expected), "missing {expected:?} in\n{page}");
    }
    assert!(!page.contains("<script>alert"), "{page}");
    assert_eq!(page.matches("<script").count(), 1, "only the console's own script: {page}");
}

#[test]
fn a_node_not_ready_says_why_and_tables_say_when_they_are_empty_or_cut() {
    let mut overview = overview();
    overview.ready = false;
    overview.readiness = "not ready: draining or not listening yet".into();
    overview.cluster = None;
    overview.expiring.clear();
    let room = overview.rooms.remove(0);
    overview.rooms = (0..MAX_ROWS + 5).map(|i| RoomStatus { id: format!("r{i}"), ..room.clone() }).collect();
    let n = overview.rooms.len();
    overview.totals = Totals { rooms: n, members: 2 * n, elsewhere: n, expiring: 0 };
    let page = page(&overview);
    assert!(
        page.contains(r#"<p id="readiness" class="state bad">not ready: draining or not listening yet</p>"#)
    );
    assert!(page.contains(r#"<p id="cluster" class="cluster">single node</p>"#));
    assert!(page.contains(r#"<td class="empty" colspan="7">none</td>"#), "{page}");
    assert!(page.contains("1,000 of 2,010 rows shown; /v1/rooms and /v1/certificates have them all"));
    assert!(page.contains("1,000 of 1,005 rows shown"));
    assert!(page.contains(r#"rowspan="2">r499</td>"#), "two rows a room, a thousand rows");
    assert!(!page.contains(r#"rowspan="2">r500</td>"#), "two rows a room, a thousand rows");
}

#[test]
fn the_assets_are_served_with_their_types() {
    assert_eq!(asset("/console.css").map(|(t, _)| t), Some("text/css; charset=utf-8"));
    assert_eq!(asset("/console.js").map(|(t, _)| t), Some("text/javascript; charset=utf-8"));
    assert!(asset("/console.js").is_some_and(|(_, body)| body.contains("/v1/overview")));
    assert_eq!(asset("/other.js"), None);
}
