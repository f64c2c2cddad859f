//! JSON-RPC error codes of protocol v1 and the error value sent to clients.

use std::fmt;

/// Every error code the server sends. The numbers are part of the wire contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame is not JSON (or not a text frame). Sent with `id: null`.
    Parse,
    /// Not a JSON-RPC 2.0 object, or params missing or ill-typed.
    InvalidRequest,
    /// The user name is held in that room by another userId.
    NameTaken,
    /// Unknown method.
    MethodNotFound,
    /// A `reconnect` could not be completed.
    ReconnectFailed,
    /// The room named in a message was not joined on this socket.
    NotJoined,
    /// Too many requests; nothing was published.
    RateLimited,
    /// The message text exceeds the limit.
    TooLarge,
    /// Missing or invalid token, or a userId, name or room the token does not allow (or
    /// the identity already bound to this socket).
    Unauthorized,
    /// A join could not be completed for now (the cluster could not be reached); retry.
    JoinFailed,
    /// The message could not be stored; retry with the same uuid.
    Unavailable,
}

impl ErrorCode {
    /// Every code, in the order PROTOCOL.md lists them.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::Parse,
        ErrorCode::InvalidRequest,
        ErrorCode::NameTaken,
        ErrorCode::MethodNotFound,
        ErrorCode::ReconnectFailed,
        ErrorCode::NotJoined,
        ErrorCode::RateLimited,
        ErrorCode::TooLarge,
        ErrorCode::Unauthorized,
        ErrorCode::JoinFailed,
        ErrorCode::Unavailable,
    ];

    /// The integer sent on the wire.
    pub const fn code(self) -> i64 {
        match self {
            ErrorCode::Parse => -32700,
            ErrorCode::InvalidRequest => -32600,
            ErrorCode::NameTaken => -32001,
            ErrorCode::MethodNotFound => -32002,
            ErrorCode::ReconnectFailed => -32003,
            ErrorCode::NotJoined => -32004,
            ErrorCode::RateLimited => -32005,
            ErrorCode::TooLarge => -32006,
            ErrorCode::Unauthorized => -32007,
            ErrorCode::JoinFailed => -32008,
            ErrorCode::Unavailable => -32010,
        }
    }

    /// The code for a wire integer, if it is one of ours.
    pub fn from_code(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// An error response's `error` member: a code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        RpcError::new(ErrorCode::InvalidRequest, message)
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code.code())
    }
}

impl std::error::Error for RpcError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(c.code()), Some(c));
        }
        assert_eq!(ErrorCode::from_code(-32601), None);
        assert_eq!(ErrorCode::NameTaken.code(), -32001);
        assert_eq!(ErrorCode::Unauthorized.code(), -32007);
        assert_eq!(ErrorCode::JoinFailed.code(), -32008);
        assert_eq!(ErrorCode::Unavailable.code(), -32010);
        let mut codes: Vec<i64> = ErrorCode::ALL.iter().map(|c| c.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), ErrorCode::ALL.len(), "codes are distinct");
    }
}
