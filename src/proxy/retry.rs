//! Which failures may be retried, and which end the request: a prompt is sent again only
//! when the backend provably did not receive it. Pure decisions over Pingora's errors, so
//! each rule is tested without a backend.

use bytes::Bytes;
use pingora_error::{Error, ErrorType};

/// What failed while writing a request upstream.
pub enum WriteFailure {
    /// Writing the header or the body failed: the backend never had the whole request
    /// (resent when the connection was a reused one, see [`may_resend`]).
    Stale(Box<Error>),
    /// Finishing the request failed: its last bytes may already have arrived.
    Failed(Box<Error>),
}

/// Whether a failed write on a connection means the backend cannot have processed the
/// request: only a reused keep-alive connection (the backend may have closed it while
/// idle) whose write failed, before the whole request was written and before any response
/// byte (we read nothing until the request is written), and only once per request.
pub fn may_resend(reused: bool, already_resent: bool, error: &Error) -> bool {
    reused
        && !already_resent
        && matches!(
            error.etype(),
            ErrorType::WriteError | ErrorType::ConnectionClosed
        )
}

/// Whether watching an idle client connection ended because the client went away (it
/// closed or reset the connection), rather than because it sent bytes after its body
/// (Pingora reports those as an error too when pipelining is off).
pub fn client_left(idle: pingora_error::Result<Option<Bytes>>) -> bool {
    match idle {
        Ok(_) => false,
        Err(e) => e.etype() != &ErrorType::ConnectError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::backend::{connect_failure, ConnectFailure};

    #[test]
    fn connect_failures_are_told_apart_through_the_error_chain() {
        let local = Error::because(
            ErrorType::InternalError,
            "Fail to connect",
            Error::explain(
                ErrorType::SocketError,
                "failed to create socket: Too many open files",
            ),
        );
        assert_eq!(connect_failure(&local), ConnectFailure::Local);
        assert_eq!(
            connect_failure(&Error::new(ErrorType::ConnectRefused)),
            ConnectFailure::Refused
        );
        assert_eq!(
            connect_failure(&Error::new(ErrorType::ConnectTimedout)),
            ConnectFailure::TimedOut
        );
        let wrapped = Error::because(
            ErrorType::InternalError,
            "connect",
            Error::new(ErrorType::ConnectTimedout),
        );
        assert_eq!(connect_failure(&wrapped), ConnectFailure::TimedOut);
    }

    #[test]
    fn only_a_failed_write_on_a_reused_connection_is_resent_and_only_once() {
        let write = Error::new(ErrorType::WriteError);
        assert!(may_resend(true, false, &write));
        assert!(!may_resend(true, true, &write), "at most once");
        assert!(!may_resend(false, false, &write), "a fresh connection");
        for after_write in [
            ErrorType::ReadError,
            ErrorType::ReadTimedout,
            ErrorType::WriteTimedout,
            ErrorType::InvalidHTTPHeader,
        ] {
            assert!(!may_resend(true, false, &Error::new(after_write)));
        }
    }
}
