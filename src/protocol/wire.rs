//! Frames on a tensor-iroh stream, with a bound on every length read.
//!
//! A frame is one tag byte and a body:
//! - `MESSAGE`: a little-endian u32 length and that many bytes of JSON ([`Message`]);
//! - `CHUNK`: u32 chunk index, u32 data length, the data, then the 32-byte hash of
//!   the data (after it, so a sender can stream a chunk while it hashes it);
//! - `CODED_CHUNK`: u32 chunk index, u32 data length, then the data as blocks of
//!   at most [`MAX_BLOCK`] bytes, then the hash of the (decoded) data. A block is
//!   `STORED`, a u32 length and the bytes, or `CODED`, a u32 decoded length, a
//!   u32 coded length and the coding ([`crate::codec`]);
//! - `KEPT`: u32 chunk index: the receiver already holds that chunk;
//! - `END`: the 32-byte BLAKE3 hash of the whole file.

use serde::{Deserialize, Serialize};

use super::coding::Compress;
use super::errors::ErrorCode;

/// The protocol this build speaks, carried in the ALPN and in [`Message::Hello`].
/// Version 2 added coded chunks.
pub const PROTOCOL_VERSION: u32 = 2;
/// Data chunks are at most this long; each is hashed and checked on its own.
pub const CHUNK_SIZE: u64 = 8 << 20;
/// A block of a coded chunk decodes to at most this many bytes, so a peer
/// cannot make a receiver decode without bound.
pub const MAX_BLOCK: u32 = 1 << 20;
/// A JSON message longer than this is a broken or hostile peer.
pub const MAX_MESSAGE_BYTES: u32 = 32 << 20;
/// The tag and length before a message's JSON.
pub const MESSAGE_PREFIX: usize = 5;
/// Bounds on what one offer may describe, so a peer cannot make us allocate
/// without limit: 1 PiB in 8 MiB chunks.
pub const MAX_FILE_BYTES: u64 = 1 << 50;
pub const MAX_NAME_BYTES: usize = 1024;
/// The most tensors one pull request may name: ten times the tensors of the
/// largest checkpoints, few enough that the work of one request is bounded.
pub const MAX_REQUEST_TENSORS: usize = 1 << 20;
/// The most chunk hashes one `ChunkHashes` message carries: 32 GiB of file.
pub const MAX_ANNOUNCED_HASHES: usize = 4096;
/// The most chunks one `FetchChunks` request names: a puller hands out small
/// batches, so that a failed source gives back little.
pub const MAX_CHUNKS_PER_REQUEST: usize = 64;

pub const TAG_MESSAGE: u8 = 1;
pub const TAG_CHUNK: u8 = 2;
pub const TAG_KEPT: u8 = 3;
pub const TAG_END: u8 = 4;
pub const TAG_CODED_CHUNK: u8 = 5;

pub const BLOCK_STORED: u8 = 0;
pub const BLOCK_CODED: u8 = 1;

pub type Hash = [u8; 32];

/// A file offered by the side that holds it, before its data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Offer {
    /// The name the sender wants; the receiver reduces it to a safe one.
    pub name: String,
    pub format: String,
    pub size: u64,
    pub tensors: u64,
    /// Size and header hash: what makes a partial file resumable by a rerun.
    pub identity: String,
    /// The sender streams chunks right away, without waiting for `Ready`: used for
    /// files of one chunk, where a resume would save nothing.
    pub eager: bool,
    /// Bench traffic: the receiver checks the data and discards it.
    pub discard: bool,
    /// The hash of the first chunk of a file of several: a receiver that already
    /// stores a file of this name and size rules it out after reading one chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_chunk: Option<String>,
    /// How long the sender waits for an answer: bounds how long a receiver may
    /// spend comparing a stored file before it answers.
    #[serde(default = "default_patience_secs")]
    pub patience_secs: u64,
    /// How many files the send this one belongs to has (0: not said): a
    /// listener writing to stdout takes a send of one file only.
    #[serde(default)]
    pub files_in_send: u64,
    /// On how many streams the sender can carry the chunks (0 or 1: this one
    /// only); the receiver's `Ready` says how many it takes.
    #[serde(default)]
    pub stripes: u32,
    /// Where the holder listens, the transfer its extra streams must name (0:
    /// none); where the receiver listens, its `Ready` names it instead.
    #[serde(default)]
    pub transfer: u64,
}

fn default_patience_secs() -> u64 {
    20
}

impl Offer {
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(CHUNK_SIZE)
    }
}

/// A chunk the receiver already holds, with the hash it has for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeldChunk {
    pub index: u32,
    pub hash: String,
}

/// A tensor as a listener serves it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub bytes: u64,
}

/// A file as a listener serves it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogFile {
    pub name: String,
    pub format: String,
    pub size: u64,
    pub tensors: Vec<TensorEntry>,
}

/// A tensor of a served file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorRef {
    pub file: String,
    pub tensor: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Opens every connection, from the dialer; the listener answers with its own.
    Hello {
        version: u32,
    },
    /// The dialer will offer a file on this stream.
    Upload,
    /// The dialer asks for the served files and tensors.
    Catalog,
    /// The dialer asks for a served file, whole or only the named tensors.
    Fetch {
        file: String,
        tensors: Option<Vec<String>>,
        /// Whether the listener codes what it sends (the puller's `--compress`).
        #[serde(default)]
        compress: Compress,
    },
    /// The dialer asks for one safetensors file holding tensors of several files.
    FetchMerged {
        tensors: Vec<TensorRef>,
        #[serde(default)]
        compress: Compress,
    },
    /// `size` bytes of bench data follow on the stream, with no framing or
    /// hashing: the bare-stream ceiling `bench --raw` measures.
    RawBench {
        size: u64,
    },
    /// The dialer has sent all its files: `files` were stored.
    Done {
        files: u64,
    },
    CatalogReply {
        files: Vec<CatalogFile>,
    },
    Offer(Offer),
    Ready {
        held: Vec<HeldChunk>,
        /// Streams the receiver takes the chunks on (0 or 1: the offer's alone).
        #[serde(default)]
        stripes: u32,
        /// Names the transfer on its extra streams.
        #[serde(default)]
        transfer: u64,
    },
    /// Opens an extra stream of a striped transfer, from the dialer: it carries
    /// the chunks whose index leaves `stripe` when divided by the stripe count.
    Stripe {
        transfer: u64,
        stripe: u32,
    },
    /// The receiver will not take the offer, or the holder cannot serve a request.
    /// Peers of protocol 2 before codes existed send no `code`.
    Refused {
        #[serde(default)]
        code: ErrorCode,
        reason: String,
    },
    /// The receiver wrote and checked the whole file under `name`.
    Stored {
        name: String,
        hash: String,
    },
    /// The receiver gave up on the file.
    Failed {
        #[serde(default)]
        code: ErrorCode,
        reason: String,
    },
    Ack,
    /// Is the peer still there? Sent by a listener to an uploader whose partial
    /// file a rerun wants to take over.
    Ping,
    Pong,
    /// Opens a fan-out's control stream, from the sender: this listener is to
    /// receive `offer` from a parent the sender names, check it against the
    /// hashes the sender announces, and pass it on to the children it names.
    Fanout {
        fanout: u64,
        offer: Offer,
    },
    /// On a fan-out's control stream, from the sender: the data now comes from
    /// `parent` (an endpoint id); a transfer from an earlier parent stops.
    Attach {
        parent: String,
    },
    /// On a fan-out's control stream, from the sender: pass the file on to
    /// `child` (a ticket) as well.
    ForwardTo {
        child: String,
    },
    /// The dialer asks for the chunk hashes and BLAKE3 hash of a served file,
    /// to fetch it from several listeners at once.
    FetchHashes {
        file: String,
    },
    /// The hashes of chunks `first`, `first + 1`, ... of a file, as hex: from
    /// a fan-out's sender on its control stream, or answering `FetchHashes`.
    ChunkHashes {
        first: u64,
        hashes: Vec<String>,
    },
    /// Ends the answer to `FetchHashes`: the offer the listener makes for the
    /// whole file, and the file's BLAKE3 hash (hex) its chunk hashes merge into.
    FileHashes {
        offer: Offer,
        hash: String,
    },
    /// The dialer asks for some chunks of a served whole file whose BLAKE3
    /// hash is `hash`; they follow in the order named, then the stream ends.
    FetchChunks {
        file: String,
        hash: String,
        chunks: Vec<u32>,
        #[serde(default)]
        compress: Compress,
    },
    /// On a fan-out's control stream, from the receiver, about once a second: the
    /// file bytes it holds checked.
    Have {
        bytes: u64,
        /// File bytes its current transfer received so far, checked or not: a
        /// sign of progress on a link too slow to finish a chunk per timeout.
        #[serde(default)]
        arriving: u64,
    },
    /// On a fan-out's control stream, from the receiver: passing the file on
    /// to `child` (an endpoint id) failed.
    ForwardFailed {
        child: String,
        reason: String,
    },
    /// On a fan-out's control stream, from the receiver: its copy is stored.
    FanoutStored {
        name: String,
        hash: String,
        /// File bytes that crossed the network into it, and their wire bytes.
        data_bytes: u64,
        wire_bytes: u64,
    },
    /// Opens a fan-out's data stream, from the parent: the file of `fanout`
    /// follows as in an upload.
    Forwarded {
        fanout: u64,
    },
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("messages serialize");
        let mut frame = Vec::with_capacity(MESSAGE_PREFIX + json.len());
        frame.push(TAG_MESSAGE);
        frame.extend_from_slice(&(json.len() as u32).to_le_bytes());
        frame.extend_from_slice(&json);
        frame
    }

    pub fn decode(body: &[u8]) -> Result<Message, WireError> {
        serde_json::from_slice(body).map_err(|err| WireError::BadMessage(err.to_string()))
    }

    /// The message's type as it appears on the wire, to name it in an error
    /// without echoing a peer's (possibly huge) content.
    pub fn kind(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|value| value["type"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Checks the lengths and counts a message carries against what an honest
    /// peer could send.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            Message::Offer(offer) => {
                check_name(&offer.name)?;
                if offer.size > MAX_FILE_BYTES {
                    return Err(WireError::Bound("file size", offer.size, MAX_FILE_BYTES));
                }
            }
            Message::Ready { held, .. } if held.len() as u64 > MAX_FILE_BYTES / CHUNK_SIZE => {
                return Err(WireError::Bound(
                    "held chunks",
                    held.len() as u64,
                    MAX_FILE_BYTES / CHUNK_SIZE,
                ));
            }
            Message::Fetch { file, tensors, .. } => {
                check_name(file)?;
                check_request(tensors.as_ref().map_or(0, Vec::len))?;
            }
            Message::FetchMerged { tensors, .. } => check_request(tensors.len())?,
            Message::Fanout { offer, .. } => Message::Offer(offer.clone()).validate()?,
            Message::FetchHashes { file } => check_name(file)?,
            Message::ChunkHashes { hashes, .. } if hashes.len() > MAX_ANNOUNCED_HASHES => {
                return Err(WireError::Bound(
                    "announced hashes",
                    hashes.len() as u64,
                    MAX_ANNOUNCED_HASHES as u64,
                ));
            }
            Message::FileHashes { offer, .. } => Message::Offer(offer.clone()).validate()?,
            Message::FetchChunks { file, chunks, .. } => {
                check_name(file)?;
                if chunks.len() > MAX_CHUNKS_PER_REQUEST {
                    return Err(WireError::Bound(
                        "chunks in one request",
                        chunks.len() as u64,
                        MAX_CHUNKS_PER_REQUEST as u64,
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), WireError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(WireError::Bound(
            "name length",
            name.len() as u64,
            MAX_NAME_BYTES as u64,
        ));
    }
    Ok(())
}

fn check_request(tensors: usize) -> Result<(), WireError> {
    if tensors > MAX_REQUEST_TENSORS {
        return Err(WireError::RequestTooLarge(tensors));
    }
    Ok(())
}

/// The frame header of a chunk of `len` bytes: `coded` when its data follows
/// as blocks.
pub fn chunk_header(index: u32, len: u32, coded: bool) -> [u8; 9] {
    let mut header = [0u8; 9];
    header[0] = if coded { TAG_CODED_CHUNK } else { TAG_CHUNK };
    header[1..5].copy_from_slice(&index.to_le_bytes());
    header[5..9].copy_from_slice(&len.to_le_bytes());
    header
}

/// The header of a block of a coded chunk that holds `len` bytes as they are.
pub fn stored_block_header(len: u32) -> [u8; 5] {
    let mut header = [0u8; 5];
    header[0] = BLOCK_STORED;
    header[1..5].copy_from_slice(&len.to_le_bytes());
    header
}

/// The length of a coded block's header, counted with its bytes on the wire.
pub const CODED_BLOCK_HEADER: u64 = 9;

/// The header of a block that decodes to `len` bytes from `coded_len`.
pub fn coded_block_header(len: u32, coded_len: u32) -> [u8; CODED_BLOCK_HEADER as usize] {
    let mut header = [0u8; CODED_BLOCK_HEADER as usize];
    header[0] = BLOCK_CODED;
    header[1..5].copy_from_slice(&len.to_le_bytes());
    header[5..9].copy_from_slice(&coded_len.to_le_bytes());
    header
}

pub fn kept_frame(index: u32) -> [u8; 5] {
    let mut frame = [0u8; 5];
    frame[0] = TAG_KEPT;
    frame[1..5].copy_from_slice(&index.to_le_bytes());
    frame
}

pub fn end_frame(hash: &Hash) -> [u8; 33] {
    let mut frame = [0u8; 33];
    frame[0] = TAG_END;
    frame[1..].copy_from_slice(hash);
    frame
}

pub fn hash_hex(hash: &Hash) -> String {
    hex::encode(hash)
}

pub fn parse_hash(text: &str) -> Result<Hash, WireError> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text, &mut hash).map_err(|_| WireError::BadMessage("bad hash".into()))?;
    Ok(hash)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    UnknownTag(u8),
    BadMessage(String),
    /// What, its value, and the most it may be.
    Bound(&'static str, u64, u64),
    /// A request naming this many tensors.
    RequestTooLarge(usize),
    Unexpected(&'static str),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::UnknownTag(tag) => write!(f, "unknown frame tag {tag}"),
            WireError::BadMessage(err) => write!(f, "malformed message: {err}"),
            WireError::Bound(what, value, limit) => {
                write!(f, "{what} {value} is out of bounds (at most {limit})")
            }
            WireError::RequestTooLarge(tensors) => write!(
                f,
                "the request names {tensors} tensors; a listener takes at most {MAX_REQUEST_TENSORS} in one request"
            ),
            WireError::Unexpected(what) => write!(f, "protocol violation: {what}"),
        }
    }
}

impl std::error::Error for WireError {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn messages_round_trip() {
        let offer = Message::Offer(Offer {
            name: "model.safetensors".into(),
            format: "safetensors".into(),
            size: 12,
            tensors: 1,
            identity: "ab".into(),
            eager: true,
            discard: false,
            first_chunk: None,
            patience_secs: 20,
            files_in_send: 1,
            stripes: 4,
            transfer: 0,
        });
        let frame = offer.encode();
        assert_eq!(frame[0], TAG_MESSAGE);
        assert_eq!(Message::decode(&frame[5..]).unwrap(), offer);
    }

    #[test]
    fn a_refusal_without_a_code_from_an_older_peer_still_reads() {
        let older = br#"{"type":"refused","reason":"name \"..\" climbs out"}"#;
        assert_eq!(
            Message::decode(older).unwrap(),
            Message::Refused {
                code: ErrorCode::Other,
                reason: "name \"..\" climbs out".into()
            }
        );
        let failed = Message::Failed {
            code: ErrorCode::NoSpace,
            reason: "w.npy: not enough space".into(),
        };
        let frame = failed.encode();
        let json = std::str::from_utf8(&frame[MESSAGE_PREFIX..]).unwrap();
        assert!(json.contains(r#""code":"no_space""#), "{json}");
        assert_eq!(Message::decode(json.as_bytes()).unwrap(), failed);
    }

    #[test]
    fn oversized_offers_are_refused() {
        let offer = Message::Offer(Offer {
            name: "x".repeat(MAX_NAME_BYTES + 1),
            format: "npy".into(),
            size: 1,
            tensors: 1,
            identity: String::new(),
            eager: false,
            discard: false,
            first_chunk: Some("00".repeat(32)),
            patience_secs: 3,
            files_in_send: 0,
            stripes: 0,
            transfer: 0,
        });
        assert!(offer.validate().is_err());
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(message) = Message::decode(&body) {
                let _ = message.validate();
            }
        }

        #[test]
        fn decoding_mangled_messages_never_panics(cut in 0usize..200, byte in any::<u8>(), at in 0usize..200) {
            let mut body = Message::Fetch { file: "a.npy".into(), tensors: Some(vec!["t".into()]), compress: Compress::Auto }.encode()[5..].to_vec();
            body.truncate(cut.min(body.len()));
            if !body.is_empty() {
                let at = at % body.len();
                body[at] = byte;
            }
            let _ = Message::decode(&body);
        }
    }
}
