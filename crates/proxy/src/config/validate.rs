//! From the file to the validated configuration: overrides applied, every value checked, each
//! error naming its key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::{AdminAllow, AuthHookSection, ClusterSection, FileConfig};
use super::overrides::Overrides;
use super::settings::{
    ADMIN_ROOM, AclRule, AdminAccess, ClusterConfig, Config, HookConfig, MAX_PRESENCE_TTL, MAX_PROBE_TIMEOUT,
};
use crate::error::{Error, Result};

impl FileConfig {
    /// Applies overrides and validates everything.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first invalid key.
    pub fn into_config(self, overrides: &Overrides) -> Result<Config> {
        let bind_text = overrides.bind.clone().unwrap_or(self.listen.bind);
        let mut bind: SocketAddr = bind_text
            .parse()
            .map_err(|_| invalid("listen.bind", format!("{bind_text:?} is not an address:port")))?;
        if let Some(address) = &overrides.bind_address {
            let ip = resolve_address(address)?;
            bind.set_ip(ip);
        }
        if let Some(port) = overrides.bind_port {
            bind.set_port(port);
        }
        let path_prefix = overrides.path_prefix.clone().unwrap_or(self.listen.path_prefix);
        if !path_prefix.starts_with('/') || !path_prefix.ends_with('/') {
            return Err(invalid(
                "listen.path_prefix",
                format!("{path_prefix:?} must start and end with '/'"),
            ));
        }
        let server_cert = overrides.server_cert.clone().unwrap_or(self.tls.server_cert);
        let server_key = Some(self.tls.server_key).filter(|p| !p.as_os_str().is_empty());
        let mut client_ca = vec![overrides.client_ca.clone().unwrap_or(self.tls.client_ca)];
        if let Some(dir) = &overrides.ca_dir {
            client_ca.extend(ca_dir_files(dir)?);
        }

        let admin_text = overrides.admin_bind.clone().unwrap_or(self.admin.bind);
        let admin_bind = match admin_text.as_str() {
            "" => None,
            text => Some(text.parse().map_err(|_| {
                invalid("admin.bind", format!("{text:?} is not an address:port (or \"\" to turn it off)"))
            })?),
        };

        let rooms = self.rooms;
        if rooms.max_peers < 2 {
            return Err(invalid("rooms.max_peers", "must be at least 2".into()));
        }
        // Checked here too, not only when logging starts: `check-config` says what serving would.
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", format!("invalid filter {:?}: {e}", self.log.level)));
        }
        let limits = self.limits;
        positive("rooms.hold_max_messages", rooms.hold_max_messages)?;
        positive("rooms.hold_max_bytes", rooms.hold_max_bytes)?;
        positive("limits.max_connections", limits.max_connections)?;
        positive("limits.max_rooms", limits.max_rooms)?;
        positive("limits.max_handshakes_in_flight", limits.max_handshakes_in_flight)?;
        if limits.max_hello_bytes < 256 {
            return Err(invalid("limits.max_hello_bytes", "must be at least 256".into()));
        }
        positive("limits.queue_frames", limits.queue_frames)?;
        if !(1024..=65536).contains(&limits.max_request_head_bytes) {
            return Err(invalid("limits.max_request_head_bytes", "must be between 1024 and 65536".into()));
        }
        if !(8..=256).contains(&limits.max_request_headers) {
            return Err(invalid("limits.max_request_headers", "must be between 8 and 256".into()));
        }
        if limits.max_frame_bytes < 1024 {
            return Err(invalid("limits.max_frame_bytes", "must be at least 1024".into()));
        }
        if limits.max_bytes_per_second != 0 && limits.max_bytes_per_second < limits.max_frame_bytes as u64 {
            return Err(invalid(
                "limits.max_bytes_per_second",
                "must be 0 (no limit) or at least limits.max_frame_bytes".into(),
            ));
        }
        if limits.queue_bytes < limits.max_frame_bytes {
            return Err(invalid("limits.queue_bytes", "must be at least limits.max_frame_bytes".into()));
        }

        Ok(Config {
            bind,
            path_prefix,
            backlog: self.listen.backlog.max(1),
            server_cert,
            server_key,
            client_ca,
            crl_files: self.tls.crl_files,
            handshake_timeout: duration("tls.handshake_timeout", &self.tls.handshake_timeout)?,
            resumption: self.tls.resumption,
            ticket_key_file: Some(self.tls.ticket_key_file).filter(|p| !p.as_os_str().is_empty()),
            ticket_rotation: ticket_rotation(&self.tls.ticket_rotation)?,
            max_peers: rooms.max_peers,
            hello_timeout: duration("rooms.hello_timeout", &rooms.hello_timeout)?,
            same_identity: rooms.same_identity,
            replace_probe_timeout: probe_timeout(&rooms.replace_probe_timeout)?,
            expiry_warning: duration("tls.expiry_warning", &self.tls.expiry_warning)?,
            hold_max_messages: rooms.hold_max_messages,
            hold_max_bytes: rooms.hold_max_bytes,
            hold_max_age: duration("rooms.hold_max_age", &rooms.hold_max_age)?,
            max_connections: limits.max_connections,
            max_connections_per_ip: limits.max_connections_per_ip,
            max_connections_per_identity: limits.max_connections_per_identity,
            max_rooms: limits.max_rooms,
            max_hello_bytes: limits.max_hello_bytes,
            max_frames_per_second: limits.max_frames_per_second,
            max_bytes_per_second: limits.max_bytes_per_second,
            max_handshakes_per_second: limits.max_handshakes_per_second,
            max_handshakes_in_flight: limits.max_handshakes_in_flight,
            max_request_head_bytes: limits.max_request_head_bytes,
            max_request_headers: limits.max_request_headers,
            max_frame_bytes: limits.max_frame_bytes,
            queue_frames: limits.queue_frames,
            queue_bytes: limits.queue_bytes,
            slow_consumer_timeout: duration("limits.slow_consumer_timeout", &limits.slow_consumer_timeout)?,
            ping_interval: duration("keepalive.ping_interval", &self.keepalive.ping_interval)?,
            pong_timeout: duration("keepalive.pong_timeout", &self.keepalive.pong_timeout)?,
            shutdown_grace: duration("shutdown.grace", &self.shutdown.grace)?,
            drain_window: duration("shutdown.drain_window", &self.shutdown.drain_window)?,
            admin_access: admin_access(admin_bind, self.admin.token_file, self.admin.allow)?,
            admin_bind,
            log_format: overrides.log_format.unwrap_or(self.log.format),
            log_level: self.log.level,
            acl: self.acl.rules,
            auth_hook: self.auth_hook.into_config()?,
            cluster: self.cluster.into_config(limits.max_frame_bytes)?,
        })
    }
}

impl ClusterSection {
    /// The cluster's settings, checked; `max_frame_bytes` is the largest frame a member may
    /// send, which the outbox must be able to hold.
    fn into_config(self, max_frame_bytes: usize) -> Result<Option<ClusterConfig>> {
        if self.redis_url.is_empty() {
            return Ok(None);
        }
        let urls: Vec<&str> = self.redis_url.split(',').map(str::trim).collect();
        if urls.len() > 1 && !self.redis_cluster {
            return Err(invalid(
                "cluster.redis_url",
                "several URLs are for a Redis Cluster (redis_cluster = true)".into(),
            ));
        }
        for url in urls {
            let scheme = url.split("://").next().unwrap_or_default();
            if !matches!(scheme, "redis" | "rediss" | "redis+unix" | "unix") || !url.contains("://") {
                return Err(invalid(
                    "cluster.redis_url",
                    format!("{:?} is not a redis://, rediss:// or redis+unix:// URL", redacted_url(url)),
                ));
            }
        }
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        let node_id = if self.node_id.is_empty() { host_name() } else { self.node_id };
        if node_id.is_empty() || node_id.len() > 64 || !node_id.chars().all(plain) {
            return Err(invalid("cluster.node_id", "must be 1-64 letters, digits, '-', '_' or '.'".into()));
        }
        if self.key_prefix.is_empty() || !self.key_prefix.chars().all(|c| plain(c) || c == ':') {
            return Err(invalid(
                "cluster.key_prefix",
                "must be letters, digits, '-', '_', '.' or ':'".into(),
            ));
        }
        let presence_ttl = duration("cluster.presence_ttl", &self.presence_ttl)?;
        let command_timeout = duration("cluster.command_timeout", &self.command_timeout)?;
        if presence_ttl < command_timeout * 4 {
            return Err(invalid(
                "cluster.presence_ttl",
                "must be at least 4 times cluster.command_timeout (presence is refreshed every quarter)"
                    .into(),
            ));
        }
        if presence_ttl > MAX_PRESENCE_TTL {
            return Err(invalid("cluster.presence_ttl", "must be at most 60s".into()));
        }
        if self.outbox_bytes < max_frame_bytes + 64 {
            return Err(invalid(
                "cluster.outbox_bytes",
                "must hold a frame of limits.max_frame_bytes (plus 64 bytes)".into(),
            ));
        }
        Ok(Some(ClusterConfig {
            redis_url: self.redis_url,
            redis_cluster: self.redis_cluster,
            ca_file: Some(self.ca_file).filter(|p| !p.as_os_str().is_empty()),
            node_id,
            key_prefix: self.key_prefix,
            presence_ttl,
            command_timeout,
            outbox_bytes: self.outbox_bytes,
        }))
    }
}

/// Redis URLs (one, or several separated by commas) without their passwords, for messages.
pub(crate) fn redacted_url(urls: &str) -> String {
    let one = |url: &str| match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    };
    urls.split(',').map(|u| one(u.trim())).collect::<Vec<_>>().join(",")
}

/// This machine's name, for a node id; "node" when it cannot be read.
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String =
        name.trim().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).collect();
    if name.is_empty() { "node".into() } else { name }
}

impl AuthHookSection {
    fn into_config(self) -> Result<Option<HookConfig>> {
        if self.url.is_empty() {
            return Ok(None);
        }
        let url: http::Uri = self
            .url
            .parse()
            .map_err(|e| invalid("auth_hook.url", format!("{:?} is not a URL: {e}", self.url)))?;
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            return Err(invalid(
                "auth_hook.url",
                format!("{:?} must be an http:// or https:// URL", self.url),
            ));
        }
        let timeout = duration("auth_hook.timeout", &self.timeout)?;
        positive("auth_hook.max_in_flight", self.max_in_flight)?;
        Ok(Some(HookConfig {
            url,
            timeout,
            cache_ttl: duration("auth_hook.cache_ttl", &self.cache_ttl)?,
            cache_entries: self.cache_entries,
            max_in_flight: self.max_in_flight,
            ca_file: Some(self.ca_file).filter(|p| !p.as_os_str().is_empty()),
        }))
    }
}

/// `rooms.replace_probe_timeout`: a duration of at most [`MAX_PROBE_TIMEOUT`].
fn probe_timeout(text: &str) -> Result<Duration> {
    let key = "rooms.replace_probe_timeout";
    let timeout = duration(key, text)?;
    if timeout > MAX_PROBE_TIMEOUT {
        return Err(invalid(key, format!("must be at most {}s", MAX_PROBE_TIMEOUT.as_secs())));
    }
    Ok(timeout)
}

/// A ticket key lives from one minute (shorter only multiplies full handshakes) to seven days
/// (the longest ticket lifetime TLS 1.3 allows a client to be told, RFC 8446 4.6.1).
fn ticket_rotation(text: &str) -> Result<Duration> {
    let key = "tls.ticket_rotation";
    let rotation = duration(key, text)?;
    if !(Duration::from_secs(60)..=Duration::from_secs(7 * 86_400)).contains(&rotation) {
        return Err(invalid(key, "must be between 1m and 7d".into()));
    }
    Ok(rotation)
}

/// The admin endpoint's protection: refused when it would be open off loopback.
fn admin_access(bind: Option<SocketAddr>, token_file: String, allow: Vec<AdminAllow>) -> Result<AdminAccess> {
    let token_file = (!token_file.is_empty()).then(|| PathBuf::from(token_file));
    let allow: Vec<AclRule> = allow
        .into_iter()
        .map(|a| AclRule {
            room: ADMIN_ROOM.into(),
            allow: true,
            cn: a.cn,
            o: a.o,
            ou: a.ou,
            san_dns: a.san_dns,
            san_uri: a.san_uri,
            fingerprint: a.fingerprint,
            peer_class: None,
        })
        .collect();
    if let Some((i, _)) = allow.iter().enumerate().find(|(_, rule)| {
        [&rule.cn, &rule.o, &rule.ou, &rule.san_dns, &rule.san_uri, &rule.fingerprint]
            .iter()
            .all(|m| m.is_none())
    }) {
        return Err(invalid(
            "admin.allow",
            format!("rule {} names no certificate field: it would let in every certificate of the CA", i + 1),
        ));
    }
    let loopback = bind.is_none_or(|addr| addr.ip().is_loopback());
    if !loopback && token_file.is_none() && allow.is_empty() {
        let addr = bind.map(|a| a.to_string()).unwrap_or_default();
        return Err(invalid(
            "admin.bind",
            format!(
                "{addr} is not a loopback address and the admin endpoint would be open to it: set admin.token_file or [[admin.allow]], or bind 127.0.0.1"
            ),
        ));
    }
    Ok(AdminAccess { token_file, tls: !loopback || !allow.is_empty(), allow })
}

fn invalid(key: &str, reason: String) -> Error {
    Error::Config { key: key.to_owned(), reason }
}

fn positive(key: &str, value: usize) -> Result<()> {
    if value == 0 { Err(invalid(key, "must be at least 1".into())) } else { Ok(()) }
}

/// The original's `--bind-address` took a host name or an IP; `localhost` is the one name we
/// resolve, everything else must be an IP (a proxy should not depend on DNS to start).
fn resolve_address(address: &str) -> Result<std::net::IpAddr> {
    if address == "localhost" {
        return Ok(std::net::IpAddr::from([127, 0, 0, 1]));
    }
    address
        .parse()
        .map_err(|_| invalid("listen.bind", format!("bind address {address:?} is not an IP address")))
}

fn ca_dir_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::Tls { path: dir.to_owned(), reason: format!("cannot read CA directory: {e}") })?;
    let mut files: Vec<PathBuf> =
        entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    files.sort();
    Ok(files)
}

/// Parses `"10s"`, `"250ms"`, `"2m"`, `"1h"`, `"30d"`: a whole number and a unit.
///
/// # Errors
/// [`Error::Config`] naming `key` when the text is not such a duration or is zero.
pub fn duration(key: &str, text: &str) -> Result<Duration> {
    let bad = || {
        invalid(key, format!("{text:?} is not a duration like \"10s\", \"250ms\", \"2m\", \"1h\" or \"30d\""))
    };
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let value = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => return Err(bad()),
    };
    if value.is_zero() {
        return Err(invalid(key, "must be more than zero".into()));
    }
    // Far beyond any setting's use, and small enough that no sum or multiple of one, or a
    // deadline that far ahead, overflows.
    if value > MAX_DURATION {
        return Err(invalid(key, format!("{text:?} is longer than ten years (3650d)")));
    }
    Ok(value)
}

/// The longest duration any setting takes.
const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogFormat;

    fn config(text: &str) -> Result<Config> {
        FileConfig::parse(text)
            .map_err(|e| Error::ConfigFile { path: "t".into(), reason: e.to_string() })?
            .into_config(&Overrides::default())
    }

    #[test]
    fn defaults_match_the_design() {
        let c = config("").unwrap();
        assert_eq!(c.bind, "0.0.0.0:5050".parse().unwrap());
        assert_eq!(c.path_prefix, "/micronets/v1/ws-proxy/");
        assert_eq!(c.max_peers, 2);
        assert_eq!(c.hello_timeout, Duration::from_secs(10));
        assert_eq!(c.max_frame_bytes, 1 << 20);
        assert_eq!(c.queue_frames, 1024);
        assert_eq!(c.ping_interval, Duration::from_secs(20));
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.server_key, None);
        assert_eq!(c.admin_bind, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(c.drain_window, Duration::from_secs(5));
    }

    #[test]
    fn session_resumption_defaults_and_bounds() {
        let c = config("").unwrap();
        assert!(c.resumption);
        assert_eq!((c.ticket_key_file, c.ticket_rotation), (None, Duration::from_secs(6 * 3600)));
        let c = config("[tls]\nticket_key_file = \"/etc/micronets/ticket.key\"\nticket_rotation = \"1d\"\n")
            .unwrap();
        assert_eq!(c.ticket_key_file.as_deref(), Some(std::path::Path::new("/etc/micronets/ticket.key")));
        assert_eq!(c.ticket_rotation, Duration::from_secs(86_400));
        for bad in ["30s", "8d"] {
            let err = config(&format!("[tls]\nticket_rotation = \"{bad}\"\n")).unwrap_err().to_string();
            assert!(err.contains("tls.ticket_rotation") && err.contains("between 1m and 7d"), "{err}");
        }
    }

    #[test]
    fn an_empty_admin_bind_turns_the_endpoint_off() {
        assert_eq!(config("[admin]\nbind = \"\"\n").unwrap().admin_bind, None);
        let err = config("[admin]\nbind = \"localhost\"\n").unwrap_err().to_string();
        assert!(err.contains("admin.bind"), "{err}");
        let off = Overrides { admin_bind: Some(String::new()), ..Overrides::default() };
        assert_eq!(FileConfig::default().into_config(&off).unwrap().admin_bind, None);
    }

    #[test]
    fn the_admin_endpoint_is_never_open_off_loopback() {
        let err = config("[admin]\nbind = \"0.0.0.0:9090\"\n").unwrap_err().to_string();
        assert!(err.contains("admin.bind") && err.contains("admin.token_file"), "{err}");
        let err = config("[admin]\nbind = \"[::]:9090\"\n").unwrap_err().to_string();
        assert!(err.contains("not a loopback address"), "{err}");
        let local = config("[admin]\nbind = \"[::1]:9090\"\n").unwrap().admin_access;
        assert!(!local.tls && local.token_file.is_none());
        let token =
            config("[admin]\nbind = \"0.0.0.0:9090\"\ntoken_file = \"/etc/t\"\n").unwrap().admin_access;
        assert!(token.tls, "off loopback: TLS");
        let allow = config("[admin]\n[[admin.allow]]\no = \"Operators\"\n").unwrap().admin_access;
        assert!(allow.tls, "client certificates need TLS, on loopback too");
        assert_eq!(allow.allow[0].room, ADMIN_ROOM);
        let err = config("[admin]\n[[admin.allow]]\n").unwrap_err().to_string();
        assert!(err.contains("admin.allow") && err.contains("every certificate"), "{err}");
        assert!(config("[admin]\n[[admin.allow]]\nrole = \"x\"\n").is_err(), "unknown keys refused");
    }

    #[test]
    fn errors_name_the_key() {
        let err = config("[rooms]\nmax_peers = 1\n").unwrap_err().to_string();
        assert_eq!(err, "config key rooms.max_peers: must be at least 2");
        let err = config("[keepalive]\nping_interval = \"soon\"\n").unwrap_err().to_string();
        assert!(err.contains("keepalive.ping_interval") && err.contains("\"soon\""), "{err}");
        let err = config("[listen]\nbind = \"nowhere\"\n").unwrap_err().to_string();
        assert!(err.contains("listen.bind"), "{err}");
        let err = config("[listen]\npath_prefix = \"/x\"\n").unwrap_err().to_string();
        assert!(err.contains("listen.path_prefix"), "{err}");
        let err = config("[limits]\nbogus = 1\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `bogus`"), "{err}");
        let err = config("[limits]\nmax_frame_bytes = \"big\"\n").unwrap_err().to_string();
        assert!(err.contains("max_frame_bytes"), "{err}");
        let err = config("[limits]\nmax_request_head_bytes = 100\n").unwrap_err().to_string();
        assert!(err.contains("limits.max_request_head_bytes"), "{err}");
        let err = config("[limits]\nmax_request_headers = 1000\n").unwrap_err().to_string();
        assert!(err.contains("limits.max_request_headers"), "{err}");
    }

    #[test]
    fn redis_passwords_are_not_shown() {
        assert_eq!(redacted_url("redis://user:secret@127.0.0.1:6379/0"), "redis://***@127.0.0.1:6379/0");
        assert_eq!(redacted_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redacted_url("redis://:a@h1:1, redis://:b@h2:2"), "redis://***@h1:1,redis://***@h2:2");
    }

    #[test]
    fn cluster_mode_is_off_unless_given_a_url_and_its_settings_are_checked() {
        assert_eq!(config("").unwrap().cluster, None);
        let c = config("[cluster]\nredis_url = \"redis://127.0.0.1:6379\"\nnode_id = \"a\"\n")
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(
            (c.node_id.as_str(), c.presence_ttl, c.redis_cluster),
            ("a", Duration::from_secs(6), false)
        );
        for (extra, key) in [
            ("redis_url = \"http://x\"", "cluster.redis_url"),
            ("redis_url = \"redis://a:1,redis://b:2\"", "cluster.redis_url"),
            ("redis_url = \"redis://a\"\nnode_id = \"a b\"", "cluster.node_id"),
            ("redis_url = \"redis://a\"\npresence_ttl = \"2s\"", "cluster.presence_ttl"),
            ("redis_url = \"redis://a\"\noutbox_bytes = 1000", "cluster.outbox_bytes"),
        ] {
            let err = config(&format!("[cluster]\n{extra}\n")).unwrap_err().to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }
        let many = config("[cluster]\nredis_url = \"redis://a:1, redis://b:2\"\nredis_cluster = true\n");
        assert!(many.unwrap().cluster.unwrap().redis_cluster);
    }

    #[test]
    fn the_auth_hook_is_off_unless_given_a_url_and_its_url_is_checked() {
        assert_eq!(config("").unwrap().auth_hook, None);
        let hook = config("[auth_hook]\nurl = \"http://127.0.0.1:8181/authz\"\n").unwrap().auth_hook.unwrap();
        assert_eq!(hook.url.path(), "/authz");
        assert_eq!(hook.timeout, Duration::from_secs(2));
        for bad in ["127.0.0.1:8181", "ftp://127.0.0.1/", "http://", "http://a b/"] {
            let err = config(&format!("[auth_hook]\nurl = {bad:?}\n")).unwrap_err().to_string();
            assert!(err.contains("auth_hook.url"), "{bad}: {err}");
        }
        let err = config("[auth_hook]\nurl = \"http://h/\"\nmax_in_flight = 0\n").unwrap_err().to_string();
        assert!(err.contains("auth_hook.max_in_flight"), "{err}");
    }

    #[test]
    fn the_documented_example_is_valid_and_matches_the_defaults() {
        let example = FileConfig::parse(include_str!("../../../../docs/ws-proxy.example.toml")).unwrap();
        let example = example.into_config(&Overrides::default()).unwrap();
        let defaults = FileConfig::default().into_config(&Overrides::default()).unwrap();
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn a_log_level_that_is_not_a_filter_is_refused_naming_the_key() {
        let err = config("[log]\nlevel = \"micronets_proxy=loud\"\n").unwrap_err().to_string();
        assert!(err.contains("log.level"), "{err}");
        assert!(config("[log]\nlevel = \"warn,ws_proxy=debug\"\n").is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("k", "250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("k", "2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration("k", "1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(duration("k", "30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(duration("k", "3650d").unwrap(), MAX_DURATION);
        for bad in ["", "s", "10", "1.5s", "-1s", "10 s", "0s", "5w", "1d2h", "3651d", "9999999999999999999s"]
        {
            assert!(duration("k", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn overrides_win() {
        let overrides = Overrides {
            bind: Some("127.0.0.1:0".into()),
            bind_port: Some(6000),
            path_prefix: Some("/p/".into()),
            log_format: Some(LogFormat::Json),
            ..Overrides::default()
        };
        let c = FileConfig::default().into_config(&overrides).unwrap();
        assert_eq!(c.bind, "127.0.0.1:6000".parse().unwrap());
        assert_eq!(c.path_prefix, "/p/");
        assert_eq!(c.log_format, LogFormat::Json);
        let localhost = Overrides { bind_address: Some("localhost".into()), ..Overrides::default() };
        assert_eq!(
            FileConfig::default().into_config(&localhost).unwrap().bind,
            "127.0.0.1:5050".parse().unwrap()
        );
    }
}
