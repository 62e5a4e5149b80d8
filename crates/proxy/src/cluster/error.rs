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
    /// A connection of the node's own (`direct.rs`) failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Redis sent what is not RESP.
    #[error(transparent)]
    Resp(#[from] super::resp::RespError),
    /// Redis closed the connection.
    #[error("redis closed the connection")]
    Closed,
    /// Redis refused a command.
    #[error("redis refused: {0}")]
    Refused(String),
    /// Redis answered a command with something it never answers to it.
    #[error("unexpected reply to {0}")]
    Unexpected(&'static str),
    /// `cluster.redis_url` cannot be used for a connection of the node's own.
    #[error("{0}")]
    Url(String),
    /// The TLS client configuration for `rediss://` cannot be made.
    #[error(transparent)]
    Tls(#[from] Box<crate::error::Error>),
}

impl From<BackplaneError> for crate::rooms::nodes::Unreachable {
    fn from(error: BackplaneError) -> Self {
        crate::rooms::nodes::Unreachable(Box::new(error))
    }
}
