//! The open-file limit (`RLIMIT_NOFILE`) against `limits.max_connections`: each connection is
//! one file, and the proxy needs more for itself. At start-up the soft limit is raised to the
//! hard one; when even that is too low, the proxy says so and serves fewer connections, so
//! that a connection past the limit is refused at once (counted as `refused`, as past
//! `max_connections`) instead of hanging in the listen backlog while accepting fails.

use tracing::{info, warn};

use crate::config::Config;

/// Files the proxy keeps for itself beside its connections: the listeners, the admin
/// endpoint's connections, Redis, the authorization hook's checks in flight, files it reads,
/// the runtime's own.
pub(crate) fn reserve(config: &Config) -> u64 {
    let hook = config.auth_hook.as_ref().map_or(0, |hook| hook.max_in_flight as u64);
    super::admin::MAX_CONNECTIONS as u64 + hook + 64
}

/// Raises the soft open-file limit to the hard one, and caps `config.max_connections` to what
/// the limit leaves past [`reserve`], warning when it must.
pub(crate) fn fit(config: &mut Config) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let mut limit = current.unwrap_or(u64::MAX);
    if let (Some(soft), Some(hard)) = (current, maximum)
        && soft < hard
    {
        match setrlimit(Resource::Nofile, Rlimit { current: maximum, maximum }) {
            Ok(()) => {
                info!(from = soft, to = hard, "raised the open-file limit to its hard limit");
                limit = hard;
            }
            Err(e) => warn!(error = %e, soft, hard, "cannot raise the open-file limit"),
        }
    } else if current.is_some() && maximum.is_none() {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: None, maximum: None });
    }
    if let Some(cap) = cap(config) {
        warn!(
            open_file_limit = limit,
            max_connections = config.max_connections,
            reserve = reserve(config),
            serving_at_most = cap,
            "the open-file limit is below limits.max_connections plus the proxy's own files: serving fewer connections (raise LimitNOFILE)"
        );
        config.max_connections = cap;
    }
}

/// The most connections the current open-file limit leaves room for past [`reserve`]; `None`
/// when it leaves room for all of `limits.max_connections`.
pub(crate) fn cap(config: &Config) -> Option<usize> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
    let reserve = reserve(config);
    if limit >= (config.max_connections as u64).saturating_add(reserve) {
        return None;
    }
    Some(usize::try_from(limit.saturating_sub(reserve).max(limit / 2).max(1)).unwrap_or(1))
}
