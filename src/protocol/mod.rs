//! The tensor-iroh protocol: frames on the wire, endpoint and ticket setup, the
//! connection pool, and moving files through streams. Nothing here knows about
//! the terminal or about where files live on disk.

pub mod client;
pub mod coding;
pub mod congestion;
pub mod endpoint;
pub mod errors;
pub mod fanout;
pub mod governor;
pub mod hashing;
pub mod liveness;
pub mod path;
pub mod pool;
pub mod sources;
pub mod stream;
pub mod stripes;
pub mod transfer;
pub mod transport;
pub mod wire;

/// The versioned ALPN of this build's protocol.
pub const ALPN: &[u8] = b"tensor-iroh/2";
/// A version-neutral ALPN on which two builds of different versions can still
/// tell each other which protocol they speak.
pub const HELLO_ALPN: &[u8] = b"tensor-iroh/hello";

/// Close code a listener uses for a peer not on its `--allow` list.
pub const CODE_REFUSED: u32 = 403;
/// Close code a listener uses when it shuts down.
pub const CODE_SHUTDOWN: u32 = 503;
/// Stream reset code of a sender whose file was written to while it was read:
/// what it sent is a mix of two versions, so it withholds the file hash.
pub const CODE_SOURCE_CHANGED: u32 = 409;
/// Stream reset code of a sender that could not read its file.
pub const CODE_SOURCE_UNREADABLE: u32 = 410;

/// The round-trip time of `connection`: that of the path in use, else the
/// slowest open path's; `None` before any was measured.
pub fn round_trip(connection: &iroh::endpoint::Connection) -> Option<std::time::Duration> {
    let paths = connection.paths();
    let selected = paths
        .iter()
        .find(|path| path.is_selected())
        .and_then(|path| connection.rtt(path.id()));
    selected.or_else(|| {
        paths
            .iter()
            .filter_map(|path| connection.rtt(path.id()))
            .max()
    })
}
