//! End-to-end tests: the real binaries, driven as a user would.

mod certgen;
mod support;
