//! Why Redis could not be used for a command.

/// A failed command, connection or reply.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackplaneError {
    /// Redis answered with an error, or the connection failed.
    #[error(transparent)]
    Redis(#[from] ::redis::RedisError),
    /// No answer within `cluster.command_timeout`.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The CA file for `rediss://` cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    CaFile { path: std::path::PathBuf, source: std::io::Error },
    /// The join script answered something it never answers.
    #[error("unexpected reply from the join script")]
    Reply,
}

impl From<BackplaneError> for crate::rooms::nodes::Unreachable {
    fn from(error: BackplaneError) -> Self {
        crate::rooms::nodes::Unreachable(Box::new(error))
    }
}
