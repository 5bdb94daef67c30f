//! The tensor-iroh protocol: frames on the wire, endpoint and ticket setup, the
//! connection pool, and moving files through streams. Nothing here knows about
//! the terminal or about where files live on disk.

pub mod client;
pub mod endpoint;
pub mod hashing;
pub mod pool;
pub mod stream;
pub mod transfer;
pub mod wire;

/// The versioned ALPN of this build's protocol.
pub const ALPN: &[u8] = b"tensor-iroh/1";
/// A version-neutral ALPN on which two builds of different versions can still
/// tell each other which protocol they speak.
pub const HELLO_ALPN: &[u8] = b"tensor-iroh/hello";

/// Close code a listener uses for a peer not on its `--allow` list.
pub const CODE_REFUSED: u32 = 403;
/// Close code a listener uses when it shuts down.
pub const CODE_SHUTDOWN: u32 = 503;

/// Rewrites iroh's connection errors into what a user can act on.
pub fn describe_connect_error(error: &str) -> String {
    if error.contains(&format!("code {CODE_REFUSED}")) || error.contains("not on the allow list") {
        "the listener refused this endpoint (it is not on the listener's --allow list)".into()
    } else if error.contains("no application protocol")
        || error.contains("peer doesn't support any known protocol")
    {
        "the peer does not speak the tensor-iroh protocol".into()
    } else if error.contains(&format!("code {CODE_SHUTDOWN}"))
        || error.contains("listener shutting down")
    {
        "the listener shut down".into()
    } else {
        error.to_string()
    }
}
