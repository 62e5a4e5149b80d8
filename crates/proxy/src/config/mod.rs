//! Configuration: the TOML file's shape ([`FileConfig`]), command-line overrides
//! ([`Overrides`]), and the validated [`Config`] the server runs on.
//!
//! Every key is optional with the default `docs/ws-proxy.example.toml` shows; unknown keys are
//! refused. Each value is validated here, before anything binds; the ACL's rules are compiled
//! by the edge (`edge/acl.rs`) when the proxy is made, which `ws-proxy check-config` does too.
//! Every part of the crate reads the validated [`Config`]; this folder imports none of them.
//!
//! `settings.rs` holds the validated types, `file.rs` the file's shape, `overrides.rs` the
//! command line's overrides, and `validate.rs` the way from the file to the [`Config`].

mod file;
mod overrides;
mod settings;
mod validate;

pub use file::{FileConfig, ParseError};
pub use overrides::Overrides;
pub use settings::{
    ADMIN_ROOM, AclRule, AdminAccess, ClusterConfig, Config, HookConfig, LogFormat, MAX_PRESENCE_TTL,
    MAX_PROBE_TIMEOUT, SameIdentity,
};
pub use validate::duration;
pub(crate) use validate::redacted_url;
