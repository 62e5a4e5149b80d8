//! Who may use the admin endpoint (`[admin]`, docs/operations.md, "The admin endpoint and its
//! console").
//!
//! On loopback, anyone on the machine, unless `admin.token_file` is set. Off loopback the
//! configuration never lets it be open (`config/validate.rs`), and it speaks TLS with the
//! server certificate of `tls.server_cert`: a request needs the bearer token of
//! `admin.token_file`, or a client certificate (verified against the peers' CAs and CRLs) that
//! an `[[admin.allow]]` rule matches; with both configured, either will do. `/healthz` and
//! `/readyz` answer everyone: load balancers and probes need them, and they tell nothing.
//!
//! A reload (SIGHUP) gives the endpoint's TLS the new server certificate, CAs and CRLs, as it
//! gives them to the relay: a certificate revoked for the relay is revoked here too. The token
//! and the rules are read at start-up only.
//!
//! The token file must be readable by its owner only (mode 0600 or stricter), like an SSH key;
//! the token is compared in constant time and never logged. It comes as `Authorization: Bearer
//! <token>`, or as the password of HTTP Basic authentication (any user name), which is what a
//! browser can send: the 401 asks for either, so a browser opening the console prompts for it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::{Request, header};
use rustls::ServerConfig;

use crate::config::{ADMIN_ROOM, Config};
use crate::edge::acl::{Acl, Decision};
use crate::edge::tls;
use crate::error::{Error, Result};
use crate::identity::PeerIdentity;
use crate::rooms::id::RoomId;

/// A token shorter than this is refused: it could be guessed.
const MIN_TOKEN: usize = 16;

/// The admin endpoint's protection, ready to check requests.
pub(crate) struct AdminGuard {
    token: Option<String>,
    allow: Acl,
    room: RoomId,
    /// The TLS configuration, when the endpoint speaks TLS: swapped by a reload.
    tls: ArcSwapOption<ServerConfig>,
}

/// Why a request is refused (401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// Neither a valid token nor an allowed certificate came with it.
    Unauthenticated,
    /// The endpoint is open (loopback, no token) and the request names a host that is not
    /// this machine: a web page in the operator's browser, reaching it by a name it rebound
    /// to 127.0.0.1 (or through an SSH tunnel), may not read it.
    ForeignHost,
}

impl AdminGuard {
    /// Reads the token file, compiles the `[[admin.allow]]` rules and makes the TLS
    /// configuration from `files` (as the relay read them), as `config` asks.
    ///
    /// # Errors
    /// [`Error::Config`] for a token file that cannot be read, is readable by others or holds
    /// too short a token, or a rule that cannot be used; [`Error::Tls`] for a CA bundle or key
    /// that cannot be used.
    pub(crate) fn new(config: &Config, files: &tls::Files) -> Result<Self> {
        let access = &config.admin_access;
        let token = access.token_file.as_deref().map(read_token).transpose()?;
        let allow = Acl::new(&access.allow)
            .map_err(|e| Error::Config { key: "admin.allow".into(), reason: e.to_string() })?;
        let tls = access.tls.then(|| tls::admin_config(config, files)).transpose()?;
        let room = RoomId::parse(ADMIN_ROOM)
            .map_err(|e| Error::Config { key: "admin.allow".into(), reason: e.to_string() })?;
        Ok(AdminGuard { token, allow, room, tls: ArcSwapOption::new(tls) })
    }

    /// The TLS configuration for a new connection, when the endpoint speaks TLS.
    pub(crate) fn tls(&self) -> Option<Arc<ServerConfig>> {
        self.tls.load_full()
    }

    /// The TLS configuration made again from `files` (as a reload read them for the relay),
    /// for [`AdminGuard::swap_tls`]; `None` when the endpoint does not speak TLS.
    ///
    /// # Errors
    /// [`Error::Tls`] for a CA bundle or a key that cannot be used.
    pub(crate) fn reload_tls(
        &self,
        config: &Config,
        files: &tls::Files,
    ) -> Result<Option<Arc<ServerConfig>>> {
        if self.tls.load().is_none() {
            return Ok(None);
        }
        tls::admin_config(config, files).map(Some)
    }

    /// Puts in place what [`AdminGuard::reload_tls`] made: new connections use it.
    pub(crate) fn swap_tls(&self, tls: Option<Arc<ServerConfig>>) {
        self.tls.store(tls);
    }

    /// Whether `request`, from a client with the verified certificate `client` (if any), may
    /// have its answer.
    pub(crate) fn check<B>(
        &self,
        request: &Request<B>,
        client: Option<&PeerIdentity>,
    ) -> std::result::Result<(), Denied> {
        if matches!(request.uri().path(), "/healthz" | "/readyz") {
            return Ok(());
        }
        let open = self.token.is_none() && self.tls.load().is_none();
        if open && !names_this_machine(request) {
            return Err(Denied::ForeignHost);
        }
        let by_token =
            self.token.as_deref().is_some_and(|token| presented(request).is_some_and(|t| same(&t, token)));
        let by_certificate = client.is_some_and(|identity| {
            !self.allow.is_empty()
                && matches!(self.allow.decide(identity, &self.room), Decision::Allow { .. })
        });
        if open || by_token || by_certificate { Ok(()) } else { Err(Denied::Unauthenticated) }
    }
}

/// Whether the request's `Host` is an IP address or `localhost` (with any port), as a
/// program or a browser on this machine, or through a tunnel to it, names it.
fn names_this_machine<B>(request: &Request<B>) -> bool {
    let Some(host) = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host
            .rsplit_once(':')
            .map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// The token of an `Authorization: Bearer` header, or the password of a `Basic` one.
fn presented<B>(request: &Request<B>) -> Option<String> {
    use base64::Engine as _;
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(credentials.to_owned());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(credentials).ok()?;
    let (_user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(password.to_owned())
}

/// Whether two tokens are equal, in time independent of where they differ.
fn same(given: &str, token: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(given.as_bytes(), token.as_bytes()).is_ok()
}

/// Reads the token from `path`: a file of its owner's only, holding at least [`MIN_TOKEN`]
/// characters (surrounding whitespace is not part of it).
fn read_token(path: &Path) -> Result<String> {
    let bad = |reason: String| Error::Config { key: "admin.token_file".into(), reason };
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "{} is readable or writable by others (mode {mode:04o}): chmod 600 it",
            path.display()
        )));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    let token = text.trim();
    if token.chars().count() < MIN_TOKEN {
        return Err(bad(format!("the token in {} is shorter than {MIN_TOKEN} characters", path.display())));
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn token_file(dir: &Path, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join("token");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(text.as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_token_file_is_the_owners_only_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let good = token_file(dir.path(), "  0123456789abcdef-long-token\n", 0o600);
        assert_eq!(read_token(&good).unwrap(), "0123456789abcdef-long-token");
        let open = token_file(dir.path(), "0123456789abcdef-long-token", 0o644);
        let err = read_token(&open).unwrap_err().to_string();
        assert!(
            err.contains("admin.token_file") && err.contains("0644") && err.contains("chmod 600"),
            "{err}"
        );
        let short = token_file(dir.path(), "short", 0o600);
        assert!(read_token(&short).unwrap_err().to_string().contains("shorter than 16"));
        assert!(read_token(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn the_token_is_read_from_the_header_and_compared_whole() {
        let request =
            |value: &str| Request::get("/metrics").header(header::AUTHORIZATION, value).body(()).unwrap();
        assert_eq!(presented(&request("Bearer abc")).as_deref(), Some("abc"));
        assert_eq!(presented(&request("bearer  abc ")).as_deref(), Some("abc"));
        // A browser's Basic authentication: "operator:abc".
        assert_eq!(presented(&request("Basic b3BlcmF0b3I6YWJj")).as_deref(), Some("abc"));
        assert_eq!(presented(&request("Basic !!")), None);
        assert_eq!(presented(&request("Digest abc")), None);
        assert!(same("0123456789abcdef", "0123456789abcdef"));
        assert!(!same("0123456789abcdeX", "0123456789abcdef"));
        assert!(!same("0123456789abcde", "0123456789abcdef"));
    }
}
