//! The error type of the message crate.

/// What can go wrong reading, building or converting an envelope.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The frame is not JSON at all (syntax error, truncated, not UTF-8).
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The frame is JSON but not a valid envelope; the text names the field and the problem.
    #[error("invalid envelope: {0}")]
    Envelope(String),
    /// A `messageBody` declared as `application/octet-stream` is not valid base64.
    #[error("invalid envelope: messageBody is not valid base64 for dataFormat application/octet-stream")]
    Base64,
    /// An HTTP method that the `http` crate cannot represent.
    #[error("invalid HTTP method {0:?}")]
    Method(String),
    /// A `path` (with its query strings) that is not a valid request target.
    #[error("invalid request path {0:?}")]
    Path(String),
    /// A status code outside 100-999.
    #[error("invalid HTTP status code {0}")]
    Status(u16),
    /// A header whose name or value cannot be carried (not a token, not visible text).
    #[error("invalid HTTP header {0:?}")]
    Header(String),
    /// A body with a `Content-Encoding` other than identity: it cannot travel, because the
    /// envelope has no place for the encoding.
    #[error("unsupported Content-Encoding {0:?}: only identity bodies can be tunnelled")]
    ContentEncoding(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Sorts a serde_json error: syntax problems are [`Error::Json`], shape problems
    /// [`Error::Envelope`].
    pub(crate) fn from_serde(err: serde_json::Error) -> Self {
        use serde_json::error::Category;
        match err.classify() {
            Category::Data => Error::Envelope(err.to_string()),
            Category::Syntax | Category::Eof | Category::Io => Error::Json(err),
        }
    }

    /// An [`Error::Envelope`] for `field` with `problem`.
    pub(crate) fn field(field: &str, problem: &str) -> Self {
        Error::Envelope(format!("{field} {problem}"))
    }
}
