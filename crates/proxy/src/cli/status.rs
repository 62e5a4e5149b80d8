//! `ws-proxy status`: the rooms report of a running proxy, read from its admin endpoint and
//! printed as a table for a human.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::admin_client;
use crate::config::{FileConfig, Overrides};
use crate::error::{Error, Result};
use crate::ops::status::RoomStatus;

/// The report as a table: one line per member, its room first.
#[must_use]
pub fn table(rooms: &[RoomStatus], now: SystemTime) -> String {
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let header =
        ["ROOM", "PEER CLASS", "PEER ID", "SUBJECT", "FINGERPRINT", "UP", "FRAMES IN/OUT", "BYTES IN/OUT"];
    let mut rows: Vec<[String; 8]> = vec![header.map(str::to_owned)];
    for room in rooms {
        for m in &room.members {
            rows.push([
                room.id.clone(),
                m.peer_class.clone().unwrap_or_else(|| "-".into()),
                m.peer_id.clone().unwrap_or_else(|| "-".into()),
                m.subject.clone(),
                m.fingerprint.chars().take(16).collect(),
                uptime(now.saturating_sub(m.connected_since)),
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
            ]);
        }
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    let members: usize = rooms.iter().map(|r| r.members.len()).sum();
    let elsewhere: usize = rooms.iter().map(|r| r.elsewhere.len()).sum();
    let held: usize = rooms.iter().map(|r| r.held_messages).sum();
    let on_other_nodes =
        if elsewhere > 0 { format!(" (and {elsewhere} on other nodes)") } else { String::new() };
    let _ = writeln!(out, "{} rooms, {members} members{on_other_nodes}, {held} messages held", rooms.len());
    out
}

/// `ws-proxy status`: reads the rooms report from the admin endpoint (`admin`, else the
/// `admin.bind` of the `config` file, else the default) and returns it as a [`table`].
///
/// # Errors
/// [`Error::Config`] or [`Error::ConfigFile`] when the configuration cannot be read or turns
/// the endpoint off; [`Error::Admin`] when the endpoint cannot be read or its answer is not a
/// report.
pub fn report(admin: Option<SocketAddr>, config: Option<&Path>) -> Result<String> {
    let addr = match (admin, config) {
        (Some(addr), _) => addr,
        (None, config) => {
            let file = config.map_or_else(|| Ok(FileConfig::default()), FileConfig::load)?;
            file.into_config(&Overrides::default())?.admin_bind.ok_or_else(|| Error::Config {
                key: "admin.bind".into(),
                reason: "the admin endpoint is off (\"\"); pass --admin ADDR".into(),
            })?
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Admin { addr, reason: format!("cannot start a runtime: {e}") })?;
    let body = runtime.block_on(admin_client::get(addr, "/v1/rooms"))?;
    let rooms: Vec<RoomStatus> = serde_json::from_str(&body)
        .map_err(|e| Error::Admin { addr, reason: format!("not a rooms report: {e}") })?;
    Ok(table(&rooms, SystemTime::now()))
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
    use crate::ops::status::{MemberStatus, RemoteMemberStatus, totals};

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
        for cell in ["gw/1", "manager", "CN=manager", "ABABABABABABABAB", "1h2m", "3/4", "300/400"] {
            assert!(lines[1].contains(cell), "{cell} in {text}");
        }
        assert_eq!(lines[2], "1 rooms, 1 members, 0 messages held");
        assert_eq!(totals(&rooms).members, 1);
    }

    #[test]
    fn uptimes_are_short() {
        assert_eq!(uptime(12), "12s");
        assert_eq!(uptime(250), "4m10s");
        assert_eq!(uptime(90_000), "1d1h");
    }
}
