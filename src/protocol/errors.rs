//! Refusals and failures as they cross the wire: a small code plus text in
//! `Refused` and `Failed` messages, and the close and reset codes by which a
//! peer ends a connection or a stream. Each becomes a typed error here, so
//! callers match on the code rather than on text; what a user is told about
//! them is decided outside `protocol`.

use iroh::endpoint::{ConnectionError, ReadError, TransportErrorCode, VarInt, WriteError};
use serde::{Deserialize, Serialize};

use super::liveness::Stalled;
use super::wire::WireError;
use super::{CODE_REFUSED, CODE_SHUTDOWN, CODE_SOURCE_CHANGED, CODE_SOURCE_UNREADABLE};

/// Why a side refused a request or failed a file, as `Refused` and `Failed`
/// carry it. A peer that sends no code (or one this build does not know)
/// means `other`: the text alone then says why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The offered name cannot be stored: unsafe, or not fitting its content.
    BadName,
    /// The receiver has no room for the file.
    NoSpace,
    /// The listener takes no uploads, or not this send.
    NoUploads,
    /// The peer is not on the listener's allow list (it was admitted only to
    /// deliver a fan-out's file), or is not the fan-out's parent.
    NotAllowed,
    /// The listener serves no files.
    NothingServed,
    /// No served file has the requested name.
    UnknownFile,
    /// The served file has no tensor of a requested name.
    UnknownTensor,
    /// A request names more tensors than a listener takes at once.
    RequestTooLarge,
    /// A frame or message broke the protocol.
    ProtocolViolation,
    /// The holder's file changed while it was read.
    SourceChanged,
    /// The holder could not read its file.
    SourceUnreadable,
    /// Data did not match its hash.
    Corrupt,
    /// The other side made no progress for its stall timeout.
    Stalled,
    #[default]
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// An error of this side that its peer is told with this code.
    pub fn error(self, message: impl Into<String>) -> CodedError {
        CodedError {
            code: self,
            message: message.into(),
        }
    }
}

/// A failure of this side that names its code for the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodedError {
    pub code: ErrorCode,
    pub message: String,
}

impl std::fmt::Display for CodedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CodedError {}

/// What the peer said went wrong, in a `Refused` or `Failed` message. Its
/// text is the peer's: escape it before it reaches a terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerError {
    pub code: ErrorCode,
    pub reason: String,
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for PeerError {}

/// The peer ended the connection or a stream with a code that says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEnded {
    /// A listener refused this endpoint: it is not on its allow list.
    NotAllowed,
    /// A listener shut down.
    ShuttingDown,
    /// The holder reset the stream: its file changed while it was read.
    SourceChanged,
    /// The holder reset the stream: it could not read its file.
    SourceUnreadable,
    /// The peer's TLS handshake found no protocol in common: it is not a
    /// tensor-iroh listener.
    NoCommonProtocol,
}

/// The TLS alert `no_application_protocol` (RFC 8446), as QUIC carries it.
const NO_APPLICATION_PROTOCOL: u8 = 120;

impl PeerEnded {
    /// Why the peer closed a connection, where its close code says.
    pub fn of_connection(err: &ConnectionError) -> Option<PeerEnded> {
        let no_common_protocol = TransportErrorCode::crypto(NO_APPLICATION_PROTOCOL);
        match err {
            ConnectionError::ApplicationClosed(close) => match close.error_code {
                code if code == VarInt::from_u32(CODE_REFUSED) => Some(PeerEnded::NotAllowed),
                code if code == VarInt::from_u32(CODE_SHUTDOWN) => Some(PeerEnded::ShuttingDown),
                _ => None,
            },
            ConnectionError::ConnectionClosed(close) if close.error_code == no_common_protocol => {
                Some(PeerEnded::NoCommonProtocol)
            }
            ConnectionError::TransportError(error) if error.code == no_common_protocol => {
                Some(PeerEnded::NoCommonProtocol)
            }
            _ => None,
        }
    }

    fn of_read(err: &ReadError) -> Option<PeerEnded> {
        match err {
            ReadError::Reset(code) if *code == VarInt::from_u32(CODE_SOURCE_CHANGED) => {
                Some(PeerEnded::SourceChanged)
            }
            ReadError::Reset(code) if *code == VarInt::from_u32(CODE_SOURCE_UNREADABLE) => {
                Some(PeerEnded::SourceUnreadable)
            }
            ReadError::ConnectionLost(lost) => PeerEnded::of_connection(lost),
            _ => None,
        }
    }

    fn of_write(err: &WriteError) -> Option<PeerEnded> {
        match err {
            WriteError::ConnectionLost(lost) => PeerEnded::of_connection(lost),
            _ => None,
        }
    }

    /// The code a receiver tells the holder with, where it has one.
    fn code(self) -> ErrorCode {
        match self {
            PeerEnded::SourceChanged => ErrorCode::SourceChanged,
            PeerEnded::SourceUnreadable => ErrorCode::SourceUnreadable,
            PeerEnded::NotAllowed | PeerEnded::ShuttingDown | PeerEnded::NoCommonProtocol => {
                ErrorCode::Other
            }
        }
    }
}

impl std::fmt::Display for PeerEnded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeerEnded::NotAllowed => {
                "the peer closed the connection: not on its allow list (code 403)"
            }
            PeerEnded::ShuttingDown => "the peer closed the connection: shutting down (code 503)",
            PeerEnded::SourceChanged => {
                "the peer reset the stream: its file changed while it was read (code 409)"
            }
            PeerEnded::SourceUnreadable => {
                "the peer reset the stream: it could not read its file (code 410)"
            }
            PeerEnded::NoCommonProtocol => {
                "the peer's TLS handshake found no protocol in common (no_application_protocol)"
            }
        })
    }
}

impl std::error::Error for PeerEnded {}

/// A failed connection as an error: [`PeerEnded`] where the peer said why,
/// else `err` under `context`.
pub fn connection_failed(err: ConnectionError, context: &'static str) -> anyhow::Error {
    match PeerEnded::of_connection(&err) {
        Some(ended) => ended.into(),
        None => anyhow::Error::new(err).context(context),
    }
}

/// A failed read of a stream as an error, [`PeerEnded`] where the peer said why.
pub fn read_failed(err: ReadError) -> anyhow::Error {
    match PeerEnded::of_read(&err) {
        Some(ended) => ended.into(),
        None => anyhow::Error::new(err).context(STREAM_BROKE),
    }
}

/// [`read_failed`] for a read through `AsyncRead`, which wraps the stream's
/// error in an `io::Error`.
pub fn io_read_failed(err: std::io::Error) -> anyhow::Error {
    let ended = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<ReadError>())
        .and_then(PeerEnded::of_read);
    match ended {
        Some(ended) => ended.into(),
        None => anyhow::Error::new(err).context(STREAM_BROKE),
    }
}

/// A failed write to a stream as an error, [`PeerEnded`] where the peer said why.
pub fn write_failed(err: WriteError) -> anyhow::Error {
    match PeerEnded::of_write(&err) {
        Some(ended) => ended.into(),
        None => anyhow::Error::new(err).context(STREAM_BROKE),
    }
}

const STREAM_BROKE: &str = "stream broke";

/// The code the peer is told for `err`: that of the typed error it is or
/// holds as context, else `other`.
pub fn code_of(err: &anyhow::Error) -> ErrorCode {
    if let Some(coded) = err.downcast_ref::<CodedError>() {
        coded.code
    } else if let Some(peer) = err.downcast_ref::<PeerError>() {
        peer.code
    } else if let Some(ended) = err.downcast_ref::<PeerEnded>() {
        ended.code()
    } else if err.is::<Stalled>() {
        ErrorCode::Stalled
    } else if let Some(wire) = err.downcast_ref::<WireError>() {
        match wire {
            WireError::RequestTooLarge(_) => ErrorCode::RequestTooLarge,
            _ => ErrorCode::ProtocolViolation,
        }
    } else if err.chain().any(is_storage_full) {
        ErrorCode::NoSpace
    } else {
        ErrorCode::Other
    }
}

fn is_storage_full(cause: &(dyn std::error::Error + 'static)) -> bool {
    cause
        .downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn codes_are_snake_case_and_unknown_ones_are_other() {
        assert_eq!(
            serde_json::to_string(&ErrorCode::RequestTooLarge).unwrap(),
            r#""request_too_large""#
        );
        let from_a_newer_peer: ErrorCode = serde_json::from_str(r#""disk_on_fire""#).unwrap();
        assert_eq!(from_a_newer_peer, ErrorCode::Other);
    }

    #[test]
    fn the_code_is_found_under_context() {
        let err = anyhow::Error::new(ErrorCode::BadName.error("name \"..\" climbs out"))
            .context("refused ..");
        assert_eq!(code_of(&err), ErrorCode::BadName);
        let err = anyhow::anyhow!("not a valid .npy file")
            .context(ErrorCode::SourceChanged.error("w.npy changed on disk"));
        assert_eq!(code_of(&err), ErrorCode::SourceChanged);
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let err = Err::<(), _>(full).context("cannot write").unwrap_err();
        assert_eq!(code_of(&err), ErrorCode::NoSpace);
        let err = anyhow::Error::new(WireError::RequestTooLarge(5)).context("reading");
        assert_eq!(code_of(&err), ErrorCode::RequestTooLarge);
        assert_eq!(code_of(&anyhow::anyhow!("plain")), ErrorCode::Other);
    }
}
