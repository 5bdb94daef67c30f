//! What a user is told about an error. Every report of one (the closing
//! `error:` line, warnings, JSON `error` keys, a listener's events) goes
//! through [`describe`], the one place that puts the ways a peer ends a
//! connection or a stream into words a user can act on, naming the flags that
//! matter.

use crate::protocol::errors::{ErrorCode, PeerEnded, PeerError};

/// `err` and its context chain on one line, as `{err:#}` prints it, with the
/// ways a peer ended the connection or a stream said in a user's words. It may
/// hold a peer's text: escape it before it is printed.
pub fn describe(err: &anyhow::Error) -> String {
    err.chain()
        .map(|cause| {
            let refused = cause
                .downcast_ref::<PeerError>()
                .is_some_and(|peer| peer.code == ErrorCode::NotAllowed);
            match cause.downcast_ref::<PeerEnded>() {
                Some(ended) => in_words(*ended).to_string(),
                None if refused => in_words(PeerEnded::NotAllowed).to_string(),
                None => cause.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(": ")
}

fn in_words(ended: PeerEnded) -> &'static str {
    match ended {
        PeerEnded::NotAllowed => {
            "the listener refused this endpoint: it is not on the listener's --allow list"
        }
        PeerEnded::ShuttingDown => "the listener shut down before the transfer finished",
        PeerEnded::SourceChanged => {
            "the sender's file changed on disk while it was being sent; nothing was stored"
        }
        PeerEnded::SourceUnreadable => "the sender could not read its file; nothing was stored",
        PeerEnded::NoCommonProtocol => "the peer does not speak the tensor-iroh protocol",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_endpoint_is_told_about_the_allow_list_under_its_context() {
        let err = anyhow::Error::new(PeerEnded::NotAllowed).context("sending a.npy to 3f9a2c81d0");
        assert_eq!(
            describe(&err),
            "sending a.npy to 3f9a2c81d0: the listener refused this endpoint: it is not on the listener's --allow list"
        );
    }

    #[test]
    fn a_peers_reason_is_shown_as_it_gave_it() {
        let err = anyhow::Error::new(PeerError {
            code: ErrorCode::BadName,
            reason: "refused ../x.npy: name \"../x.npy\" climbs out of the directory".into(),
        })
        .context("sending x.npy to 3f9a2c81d0");
        assert_eq!(describe(&err), format!("{err:#}"));
    }
}
