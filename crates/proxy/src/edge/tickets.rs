//! TLS session tickets: what lets a reconnecting device resume its TLS session instead of paying
//! for a full handshake (docs/security.md, "Session resumption").
//!
//! A ticket is the session's state (its keys and the client's certificate chain), sealed with
//! AES-256-GCM under a key of the current period: time is cut into periods of
//! `tls.ticket_rotation`, and each period's key is derived (HKDF-SHA256) from a secret, the
//! period's number and the trust (the digest of the CA certificates and the CRLs). A ticket is
//! accepted during the period it was made in and the next one, so it lives between one and two
//! periods; and only where the trust is the one it was made under, so the certificate in a
//! resumed session was verified against the CAs and CRLs in force, and only its validity window
//! is left to check (`connection.rs`), not its signatures. The secret comes from
//! `tls.ticket_key_file` (readable by its owner only), so that a restarted proxy, and every
//! node of a cluster that shares the file and the trust, accepts the tickets the others issued;
//! without the file it is random, made at start, and a restart costs every device a full
//! handshake. A reload keeps the keys (the same [`Tickets`] serves every `ServerConfig`), and
//! changes them when the file's content or the trust changed.
//!
//! Layout: version (1 byte), period (8 bytes, big-endian), nonce (12 bytes), then the sealed
//! state and its tag; the first nine bytes are the additional data.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::{digest, hkdf, rand};
use rustls::server::ProducesTickets;

use crate::error::{Error, Result};
use crate::identity::unix_now;

const VERSION: u8 = 1;
/// Version and period: the additional data.
const AAD_LEN: usize = 1 + 8;
const HEADER_LEN: usize = AAD_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;
/// HKDF's salt: the keys of this scheme are its own.
const SALT: &[u8] = b"micronets ws-proxy session tickets v1";
/// A key file holds at least this much (a 256-bit secret)...
const MIN_SECRET: usize = 32;
/// ...and at most this.
const MAX_SECRET: usize = 4096;

/// The ticket keys, shared by every TLS configuration the proxy builds.
pub(crate) struct Tickets {
    /// The length of a period, in seconds.
    period: u64,
    keys: RwLock<Keys>,
}

/// The secret, the trust and the keys of the current and the previous period.
struct Keys {
    secret: Secret,
    trust: [u8; 32],
    period: u64,
    current: LessSafeKey,
    previous: LessSafeKey,
}

/// Where the keys come from.
#[derive(Clone)]
pub(crate) struct Secret {
    prk: hkdf::Prk,
    /// SHA-256 of the key file's content; `None` for a random secret.
    digest: Option<[u8; 32]>,
}

impl Secret {
    /// The secret of `tls.ticket_key_file`, or a random one without it.
    ///
    /// # Errors
    /// [`Error::Tls`] naming the key file when it cannot be read, is shorter than 32 or longer
    /// than 4096 bytes, or may be read by others than its owner.
    pub(crate) fn load(file: Option<&Path>) -> Result<Self> {
        let Some(path) = file else {
            let mut random = [0u8; MIN_SECRET];
            rand::fill(&mut random)
                .map_err(|_| error(Path::new("-"), "no randomness for the ticket keys"))?;
            return Ok(Secret::from_bytes(&random, None));
        };
        let bytes = read_private(path)?;
        if !(MIN_SECRET..=MAX_SECRET).contains(&bytes.len()) {
            return Err(error(
                path,
                &format!(
                    "holds {} bytes; a ticket key file holds {MIN_SECRET} to {MAX_SECRET} random bytes",
                    bytes.len()
                ),
            ));
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(digest::digest(&digest::SHA256, &bytes).as_ref());
        Ok(Secret::from_bytes(&bytes, Some(digest)))
    }

    fn from_bytes(bytes: &[u8], digest: Option<[u8; 32]>) -> Self {
        Secret { prk: hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(bytes), digest }
    }

    /// The key of period `period` under `trust` (HKDF-SHA256 gives the 32 bytes of an AES-256
    /// key).
    fn key(&self, period: u64, trust: &[u8; 32]) -> Option<LessSafeKey> {
        let number = period.to_be_bytes();
        let info = [&number[..], &trust[..]];
        let okm = self.prk.expand(&info, &AES_256_GCM).ok()?;
        Some(LessSafeKey::new(UnboundKey::from(okm)))
    }

    /// Whether `other` is the same file content (two random secrets never are).
    fn same_as(&self, other: &Secret) -> bool {
        self.digest.is_some() && self.digest == other.digest
    }
}

impl Tickets {
    /// Tickets sealed with keys from `secret` and `trust`, rotated every `rotation_secs` (at
    /// least 1).
    ///
    /// # Errors
    /// [`Error::Tls`] if no key can be derived from the secret.
    pub(crate) fn new(secret: Secret, rotation_secs: u64, trust: [u8; 32]) -> Result<Self> {
        let period_len = rotation_secs.max(1);
        let period = now_secs() / period_len;
        let keys = Keys::at(secret, trust, period)
            .ok_or_else(|| error(Path::new("-"), "cannot derive ticket keys"))?;
        Ok(Tickets { period: period_len, keys: RwLock::new(keys) })
    }

    /// Takes the secret and the trust of a reload: the keys change when the key file's content
    /// or the trust did. Returns whether they changed.
    pub(crate) fn rekey(&self, secret: Secret, trust: [u8; 32]) -> bool {
        let mut keys = self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let same_secret =
            keys.secret.same_as(&secret) || (keys.secret.digest.is_none() && secret.digest.is_none());
        if same_secret && keys.trust == trust {
            return false;
        }
        let secret = if same_secret { keys.secret.clone() } else { secret };
        match Keys::at(secret, trust, keys.period) {
            Some(new) => {
                *keys = new;
                true
            }
            None => false,
        }
    }

    fn period_at(&self, secs: u64) -> u64 {
        secs / self.period
    }

    /// Seals `plain` with the key of the period `secs` falls in.
    fn seal_at(&self, plain: &[u8], secs: u64) -> Option<Vec<u8>> {
        let period = self.period_at(secs);
        self.rotate_to(period);
        let keys = self.keys.read().ok()?;
        let key = if keys.period == period { &keys.current } else { return None };
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(HEADER_LEN + plain.len() + TAG_LEN);
        ticket.push(VERSION);
        ticket.extend_from_slice(&period.to_be_bytes());
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(plain);
        let mut aad = [0u8; AAD_LEN];
        aad.copy_from_slice(&ticket[..AAD_LEN]);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut ticket[HEADER_LEN..],
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        Some(ticket)
    }

    /// Opens a ticket sealed in the period `secs` falls in or the one before.
    fn open_at(&self, ticket: &[u8], secs: u64) -> Option<Vec<u8>> {
        if ticket.len() < HEADER_LEN + TAG_LEN || ticket[0] != VERSION {
            return None;
        }
        let (aad, rest) = ticket.split_at(AAD_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let sealed_in = u64::from_be_bytes(aad[1..].try_into().ok()?);
        let now = self.period_at(secs);
        self.rotate_to(now);
        let keys = self.keys.read().ok()?;
        let key = match now.checked_sub(sealed_in)? {
            0 if keys.period == now => &keys.current,
            1 if keys.period == now => &keys.previous,
            _ => return None,
        };
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut plain = sealed.to_vec();
        let opened = key.open_in_place(nonce, Aad::from(aad), &mut plain).ok()?.len();
        plain.truncate(opened);
        Some(plain)
    }

    /// Moves the keys on to `period` when it has begun.
    fn rotate_to(&self, period: u64) {
        let behind = self.keys.read().map(|keys| keys.period < period).unwrap_or(false);
        if !behind {
            return;
        }
        let mut keys = self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if keys.period < period
            && let Some(new) = Keys::at(keys.secret.clone(), keys.trust, period)
        {
            *keys = new;
        }
    }
}

impl Keys {
    fn at(secret: Secret, trust: [u8; 32], period: u64) -> Option<Self> {
        let current = secret.key(period, &trust)?;
        let previous = secret.key(period.saturating_sub(1), &trust)?;
        Some(Keys { secret, trust, period, current, previous })
    }
}

impl ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    /// The client is told a ticket lives one period: it is accepted for one to two.
    fn lifetime(&self) -> u32 {
        u32::try_from(self.period).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal_at(plain, now_secs())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open_at(cipher, now_secs())
    }
}

impl fmt::Debug for Tickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tickets").field("period_secs", &self.period).finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    u64::try_from(unix_now()).unwrap_or(0)
}

fn error(path: &Path, reason: &str) -> Error {
    Error::Tls { path: PathBuf::from(path), reason: reason.to_owned() }
}

/// Reads a file that only its owner may read, as a secret must be.
fn read_private(path: &Path) -> Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path).map_err(|e| error(path, &e.to_string()))?;
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(error(
            path,
            &format!("may be read by others than its owner (mode {:o}): chmod 600 it", mode & 0o777),
        ));
    }
    std::fs::read(path).map_err(|e| error(path, &e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const HOUR: u64 = 3600;
    const TRUST: [u8; 32] = [3; 32];

    fn tickets(secret: &[u8]) -> Tickets {
        Tickets::new(Secret::from_bytes(secret, Some([1; 32])), HOUR, TRUST).unwrap()
    }

    #[test]
    fn a_ticket_opens_in_its_period_and_the_next_and_not_after() {
        let t = tickets(&[7; 32]);
        let start = now_secs() / HOUR * HOUR;
        let ticket = t.seal_at(b"session state", start + 10).unwrap();
        assert_eq!(t.open_at(&ticket, start + 20).unwrap(), b"session state");
        assert_eq!(t.open_at(&ticket, start + HOUR + 20).unwrap(), b"session state", "the next period");
        assert!(t.open_at(&ticket, start + 2 * HOUR + 20).is_none(), "two periods on");
        // Sealed now, under the period that is current now: the rotation moved on.
        let later = t.seal_at(b"later", start + 2 * HOUR + 30).unwrap();
        assert_eq!(t.open_at(&later, start + 2 * HOUR + 40).unwrap(), b"later");
        assert!(t.open_at(&ticket, start + 20).is_none(), "a past period's key is gone");
    }

    #[test]
    fn tampered_foreign_or_truncated_tickets_do_not_open() {
        let t = tickets(&[7; 32]);
        let now = now_secs();
        let ticket = t.seal_at(b"session state", now).unwrap();
        for i in [0, 3, AAD_LEN + 1, HEADER_LEN + 2, ticket.len() - 1] {
            let mut bad = ticket.clone();
            bad[i] ^= 0x40;
            assert!(t.open_at(&bad, now).is_none(), "byte {i} flipped");
        }
        assert!(t.open_at(&ticket[..ticket.len() - 1], now).is_none());
        assert!(t.open_at(&ticket[..HEADER_LEN], now).is_none());
        assert!(t.open_at(&[], now).is_none());
        assert!(tickets(&[8; 32]).open_at(&ticket, now).is_none(), "another secret");
    }

    #[test]
    fn the_same_secret_and_trust_open_another_processs_tickets() {
        let now = now_secs();
        let ticket = tickets(&[7; 32]).seal_at(b"state", now).unwrap();
        assert_eq!(tickets(&[7; 32]).open_at(&ticket, now).unwrap(), b"state");
        let other_trust = Tickets::new(Secret::from_bytes(&[7; 32], Some([1; 32])), HOUR, [4; 32]).unwrap();
        assert!(other_trust.open_at(&ticket, now).is_none());
    }

    #[test]
    fn a_reload_changes_the_keys_only_when_the_file_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ticket.key");
        std::fs::write(&path, [5u8; 48]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = Tickets::new(Secret::load(Some(&path)).unwrap(), HOUR, TRUST).unwrap();
        let now = now_secs();
        let ticket = t.seal_at(b"state", now).unwrap();
        assert!(!t.rekey(Secret::load(Some(&path)).unwrap(), TRUST), "same content");
        assert!(t.open_at(&ticket, now).is_some());
        std::fs::write(&path, [6u8; 48]).unwrap();
        assert!(t.rekey(Secret::load(Some(&path)).unwrap(), TRUST), "new content");
        assert!(t.open_at(&ticket, now).is_none());

        let random = Tickets::new(Secret::load(None).unwrap(), HOUR, TRUST).unwrap();
        let ticket = random.seal_at(b"state", now).unwrap();
        assert!(!random.rekey(Secret::load(None).unwrap(), TRUST), "no file before or after: kept");
        assert!(random.open_at(&ticket, now).is_some());
        assert!(random.rekey(Secret::load(None).unwrap(), [4; 32]), "new CAs or CRLs");
        assert!(
            random.open_at(&ticket, now).is_none(),
            "a ticket opens only under the trust it was made under"
        );
    }

    #[test]
    fn a_key_file_must_be_private_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ticket.key");
        std::fs::write(&path, [5u8; 48]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Secret::load(Some(&path)).err().unwrap().to_string();
        assert!(e.contains("ticket.key") && e.contains("chmod 600"), "{e}");
        std::fs::write(&path, [5u8; 16]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = Secret::load(Some(&path)).err().unwrap().to_string();
        assert!(e.contains("holds 16 bytes"), "{e}");
        let e = Secret::load(Some(&dir.path().join("missing"))).err().unwrap().to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
