//! `ws-proxy status`: the rooms report of a running proxy, or the client certificates about to
//! expire (`--expiring 30d`), read from its admin endpoint and printed as a table for a human.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::admin_client::{self, Access};
use crate::config::{FileConfig, Overrides, duration};
use crate::error::{Error, Result};
use crate::ops::calendar::utc;
use crate::ops::certificates::CertificateStatus;
use crate::ops::status::RoomStatus;

/// The report as a table: one line per member, its room first.
#[must_use]
pub fn table(rooms: &[RoomStatus], now: SystemTime) -> String {
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let header = [
        "ROOM",
        "PEER CLASS",
        "PEER ID",
        "SUBJECT",
        "FINGERPRINT",
        "UP",
        "CERT EXPIRES",
        "FRAMES IN/OUT",
        "BYTES IN/OUT",
    ];
    let mut rows: Vec<[String; 9]> = vec![header.map(str::to_owned)];
    for room in rooms {
        for m in &room.members {
            rows.push([
                room.id.clone(),
                m.peer_class.clone().unwrap_or_else(|| "-".into()),
                m.peer_id.clone().unwrap_or_else(|| "-".into()),
                m.subject.clone(),
                m.fingerprint.chars().take(16).collect(),
                uptime(now.saturating_sub(m.connected_since)),
                time_left(m.not_after, now),
                format!("{}/{}", m.frames_in, m.frames_out),
                format!("{}/{}", m.bytes_in, m.bytes_out),
            ]);
        }
        for r in &room.elsewhere {
            rows.push([
                room.id.clone(),
                r.peer_class.clone().unwrap_or_else(|| "-".into()),
                r.peer_id.clone().unwrap_or_else(|| "-".into()),
                format!("(on node {})", r.node),
                r.fingerprint.chars().take(16).collect(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
    }
    let mut out = columns(&rows);
    let members: usize = rooms.iter().map(|r| r.members.len()).sum();
    let elsewhere: usize = rooms.iter().map(|r| r.elsewhere.len()).sum();
    let held: usize = rooms.iter().map(|r| r.held_messages).sum();
    let on_other_nodes =
        if elsewhere > 0 { format!(" (and {elsewhere} on other nodes)") } else { String::new() };
    let _ = writeln!(out, "{} rooms, {members} members{on_other_nodes}, {held} messages held", rooms.len());
    out
}

/// The client certificates about to expire as a table, soonest first.
#[must_use]
pub fn certificates_table(certificates: &[CertificateStatus], within: &str, now: SystemTime) -> String {
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let header = ["SUBJECT", "SERIAL", "FINGERPRINT", "NOT AFTER", "EXPIRES", "ROOMS", "LAST SEEN"];
    let mut rows: Vec<[String; 7]> = vec![header.map(str::to_owned)];
    for c in certificates {
        let seen = u64::try_from(c.last_seen).unwrap_or(0);
        rows.push([
            c.subject.clone(),
            c.serial.clone(),
            c.fingerprint.chars().take(16).collect(),
            utc(c.not_after),
            time_left(c.not_after, now),
            if c.rooms.is_empty() { "-".into() } else { c.rooms.join(",") },
            if c.connected {
                "connected".into()
            } else {
                format!("{} ago", uptime(now.saturating_sub(seen)))
            },
        ]);
    }
    let mut out = columns(&rows);
    let _ = writeln!(out, "{} certificates expire within {within}", certificates.len());
    out
}

/// Rows as left-aligned columns, two spaces apart.
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> =
        (0..N).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// `ws-proxy status`: reads the rooms report, or with `expiring` the certificates that expire
/// within it, from the admin endpoint (`admin`, else the `admin.bind` of the `config` file,
/// else the default) and returns it as a [`table`] or [`certificates_table`].
///
/// # Errors
/// [`Error::Config`] or [`Error::ConfigFile`] when the configuration cannot be read or turns
/// the endpoint off, or `expiring` is not a duration; [`Error::Admin`] when the endpoint cannot
/// be read or its answer is not a report.
pub fn report(admin: Option<SocketAddr>, config: Option<&Path>, expiring: Option<&str>) -> Result<String> {
    if let Some(within) = expiring {
        duration("--expiring", within)?;
    }
    // The configuration says where the endpoint is and how to be let in (token, TLS).
    let file = config.map_or_else(|| Ok(FileConfig::default()), FileConfig::load)?;
    let settings = file.into_config(&Overrides::default())?;
    let access = if config.is_some() { Access::of(&settings)? } else { Access::default() };
    let addr = match admin {
        Some(addr) => addr,
        None => settings.admin_bind.ok_or_else(|| Error::Config {
            key: "admin.bind".into(),
            reason: "the admin endpoint is off (\"\"); pass --admin ADDR".into(),
        })?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Admin { addr, reason: format!("cannot start a runtime: {e}") })?;
    let not_a = |what: &str, e: serde_json::Error| Error::Admin { addr, reason: format!("not {what}: {e}") };
    if let Some(within) = expiring {
        let path = format!("/v1/certificates?expiring_within={within}");
        let body = runtime.block_on(admin_client::get(addr, &path, &access))?;
        let certificates: Vec<CertificateStatus> =
            serde_json::from_str(&body).map_err(|e| not_a("a certificates report", e))?;
        return Ok(certificates_table(&certificates, within, SystemTime::now()));
    }
    let body = runtime.block_on(admin_client::get(addr, "/v1/rooms", &access))?;
    let rooms: Vec<RoomStatus> = serde_json::from_str(&body).map_err(|e| not_a("a rooms report", e))?;
    Ok(table(&rooms, SystemTime::now()))
}

/// `12d4h` until `not_after` (Unix seconds), or `expired 3d ago`.
fn time_left(not_after: i64, now: u64) -> String {
    let not_after = u64::try_from(not_after).unwrap_or(0);
    if not_after >= now {
        uptime(not_after - now)
    } else {
        format!("expired {} ago", uptime(now - not_after))
    }
}

/// `3d4h`, `2h5m`, `4m10s`, `12s`.
fn uptime(seconds: u64) -> String {
    let (d, h, m, s) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::status::{MemberStatus, RemoteMemberStatus};

    #[test]
    fn the_table_has_one_line_per_member_and_a_summary() {
        let member = MemberStatus {
            subject: "O=Micronets, CN=manager".into(),
            fingerprint: "AB".repeat(32),
            peer_class: Some("manager".into()),
            peer_id: None,
            connected_since: 1_000,
            frames_in: 3,
            bytes_in: 300,
            frames_out: 4,
            bytes_out: 400,
            address: "127.0.0.1:40000".into(),
            conflicts_survived: 0,
            not_after: 1_000 + 3_725 + 12 * 86_400 + 3_600,
        };
        let rooms = vec![RoomStatus {
            id: "gw/1".into(),
            held_messages: 0,
            held_bytes: 0,
            members: vec![member],
            elsewhere: vec![],
        }];
        let text = table(&rooms, UNIX_EPOCH + std::time::Duration::from_secs(1_000 + 3_725));
        let mut clustered = rooms.clone();
        clustered[0].elsewhere.push(RemoteMemberStatus {
            node: "two-1a2b3c4d".into(),
            fingerprint: "CD".repeat(32),
            peer_class: Some("gw".into()),
            peer_id: Some("g".into()),
        });
        let with_remote = table(&clustered, UNIX_EPOCH);
        assert!(with_remote.contains("(on node two-1a2b3c4d)"), "{with_remote}");
        assert!(
            with_remote.ends_with("1 rooms, 1 members (and 1 on other nodes), 0 messages held\n"),
            "{with_remote}"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ROOM"), "{text}");
        for cell in ["gw/1", "manager", "CN=manager", "ABABABABABABABAB", "1h2m", "12d1h", "3/4", "300/400"] {
            assert!(lines[1].contains(cell), "{cell} in {text}");
        }
        assert_eq!(lines[2], "1 rooms, 1 members, 0 messages held");
    }

    #[test]
    fn the_certificates_table_says_what_expires_when_and_who_was_seen() {
        let now = UNIX_EPOCH + std::time::Duration::from_secs(100 * 86_400);
        let soon = CertificateStatus {
            subject: "CN=gw-7".into(),
            serial: "0C".into(),
            fingerprint: "CD".repeat(32),
            not_after: 102 * 86_400,
            rooms: vec!["gw/7".into()],
            last_seen: 99 * 86_400,
            connected: false,
        };
        let gone =
            CertificateStatus { not_after: 97 * 86_400, connected: true, rooms: vec![], ..soon.clone() };
        let text = certificates_table(&[gone, soon], "30d", now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        for cell in
            ["CN=gw-7", "0C", "CDCDCDCDCDCDCDCD", "1970-04-08 00:00:00 UTC", "expired 3d0h ago", "connected"]
        {
            assert!(lines[1].contains(cell), "{cell} in {text}");
        }
        for cell in ["2d0h", "gw/7", "1d0h ago"] {
            assert!(lines[2].contains(cell), "{cell} in {text}");
        }
        assert_eq!(lines[3], "2 certificates expire within 30d");
    }

    #[test]
    fn uptimes_are_short() {
        assert_eq!(uptime(12), "12s");
        assert_eq!(uptime(250), "4m10s");
        assert_eq!(uptime(90_000), "1d1h");
    }
}
