//! Encrypted bytes waiting for the socket ([`Outgoing`]), for `tls_stream.rs`.
//!
//! The buffer is given back once everything in it is sent, so that an idle connection holds
//! none. Not while large messages flow, though: a fresh buffer must be zeroed before rustls
//! encrypts into it (safe code hands it only initialised memory), which cost about a twelfth
//! of a 64 KiB message's instructions (docs/performance.md). After a write of [`KEEP_FROM`]
//! bytes or more the buffer is kept, its bytes still initialised, and only what grows past its
//! length is zeroed; it is given back once it has drained [`COOLING`] times with only smaller
//! writes (a large frame's tail may come in a write of its own; an idle connection's pings
//! drain it twice within two ping intervals).

/// Plaintext in one write from which the buffer is kept when drained.
const KEEP_FROM: usize = 16 * 1024;
/// Drains with only smaller writes after which a kept buffer is given back.
const COOLING: u8 = 2;

/// Encrypted bytes waiting for the socket.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    /// Initialised bytes: the queued ones are `sent..filled`, the rest is room.
    buf: Vec<u8>,
    filled: usize,
    sent: usize,
    /// Drains left before the buffer is given back: [`COOLING`] after a large write.
    warm: u8,
    /// A large write came since the buffer last drained.
    large: bool,
}

impl Outgoing {
    /// Bytes waiting for the socket.
    pub(crate) fn queued(&self) -> usize {
        self.filled - self.sent
    }

    /// The bytes waiting for the socket.
    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf[self.sent..self.filled]
    }

    /// The socket took `n` bytes; once all are sent the buffer starts over, and is given back
    /// unless large writes flow.
    pub(crate) fn wrote(&mut self, n: usize) {
        self.sent += n;
        if self.sent == self.filled {
            self.sent = 0;
            self.filled = 0;
            if !std::mem::take(&mut self.large) {
                self.warm = self.warm.saturating_sub(1);
            }
            if self.warm == 0 {
                self.buf = Vec::new();
            }
        }
    }

    /// Says how much plaintext a write brings.
    pub(crate) fn writing(&mut self, plaintext: usize) {
        if plaintext >= KEEP_FROM {
            self.warm = COOLING;
            self.large = true;
        }
    }

    /// `len` bytes of room after what is queued, to encrypt into; zeroed only where the buffer
    /// grows. Nothing is queued until [`Outgoing::commit`].
    pub(crate) fn room(&mut self, len: usize) -> &mut [u8] {
        let end = self.filled + len;
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        &mut self.buf[self.filled..end]
    }

    /// Queues the first `n` bytes of the last [`Outgoing::room`].
    pub(crate) fn commit(&mut self, n: usize) {
        self.filled += n;
    }

    /// The bytes held, queued or not.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_is_kept_while_large_writes_flow_and_given_back_after_a_small_one() {
        let mut out = Outgoing::default();
        out.writing(100);
        out.room(120)[..3].copy_from_slice(b"abc");
        out.commit(3);
        assert_eq!(out.pending(), b"abc");
        out.wrote(2);
        assert_eq!((out.queued(), out.pending()), (1, &b"c"[..]));
        out.wrote(1);
        assert_eq!(out.capacity(), 0, "a small write's buffer is given back");

        out.writing(64 * 1024);
        let room = out.room(70_000);
        room[0] = 7;
        out.commit(65_536);
        // The frame's last bytes, in a write of their own, before the socket took the rest.
        out.writing(10);
        out.room(10);
        out.commit(10);
        out.wrote(65_546);
        assert!(out.capacity() >= 70_000, "kept while large writes flow");
        assert_eq!(out.room(10)[0], 7, "not zeroed again: what it held is still there");
        let small = |out: &mut Outgoing| {
            out.writing(10);
            out.room(10);
            out.commit(10);
            out.wrote(10);
        };
        small(&mut out);
        assert!(out.capacity() > 0, "one drain of small writes keeps it");
        small(&mut out);
        assert_eq!(out.capacity(), 0, "given back after two drains with small writes only");
    }
}
