//! Why receiving a file stopped: shared by the receiver and the checkers that
//! write behind it.

use anyhow::anyhow;

/// Why receiving stopped, and whether the partial file is worth keeping.
pub(super) struct Failure {
    pub(super) error: anyhow::Error,
    pub(super) keep_partial: bool,
}

impl Failure {
    pub(super) fn kept(error: anyhow::Error) -> Self {
        Failure {
            error,
            keep_partial: true,
        }
    }

    pub(super) fn dropped(error: anyhow::Error) -> Self {
        Failure {
            error,
            keep_partial: false,
        }
    }
}

/// A blocking thread panicked, and the sink went with it.
pub(super) fn lost() -> Failure {
    Failure::kept(anyhow!("writing the file failed unexpectedly"))
}
