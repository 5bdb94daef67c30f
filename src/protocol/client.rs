//! The dialing side's requests: upload a file, say a send is done, list a
//! listener's tensors, fetch them, or a file's chunk hashes and some of its chunks.

use anyhow::{Context, Result, bail, ensure};
use iroh::EndpointAddr;

use super::coding::Compress;
use super::errors::PeerError;
use super::hashing::HashList;
use super::pool::Pool;
use super::stripes::{StripeLink, Striping, fanout_stripes, link_stripes};
use super::transfer::{
    Progress, Received, Sent, SetFailed, SharedFile, Sink, Source, Traffic, receive_file, send_file,
};
use super::wire::{
    CHUNK_SIZE, CatalogFile, MAX_MESSAGE_BYTES, MESSAGE_PREFIX, Message, Offer, hash_hex,
    parse_hash,
};

/// Sends one file to the listener at `addr` and waits until it is stored.
pub async fn upload(
    pool: &Pool,
    addr: &EndpointAddr,
    source: &Source,
    striping: Striping,
    progress: &Progress,
) -> Result<Sent> {
    let (connection, mut writer, mut reader) = pool.open_on_connection(addr).await?;
    send_file(
        &mut writer,
        &mut reader,
        Some(&Message::Upload),
        source,
        StripeLink::Dialer {
            connection: &connection,
            stripes: striping.stripes(link_stripes(&connection)),
        },
        progress,
    )
    .await
}

/// Delivers `source` to the listener at `addr` as its parent in fan-out
/// `fanout` (the sender, or a listener passing the file on); the listener
/// reports its copy to the sender, not here.
pub async fn deliver(
    pool: &Pool,
    addr: &EndpointAddr,
    fanout: u64,
    source: &Source,
    progress: &Progress,
) -> Result<Sent> {
    let (connection, mut writer, mut reader) = pool.open_on_connection(addr).await?;
    send_file(
        &mut writer,
        &mut reader,
        Some(&Message::Forwarded { fanout }),
        source,
        StripeLink::Dialer {
            connection: &connection,
            stripes: fanout_stripes(&connection),
        },
        progress,
    )
    .await
}

/// Writes `pieces` on a bare stream and waits for the listener to have read
/// them all: the ceiling the file path is compared against.
pub async fn raw_upload(pool: &Pool, addr: &EndpointAddr, pieces: &[bytes::Bytes]) -> Result<()> {
    let (mut writer, mut reader) = pool.open(addr).await?;
    let size = pieces.iter().map(|p| p.len() as u64).sum();
    writer.message(&Message::RawBench { size }).await?;
    for piece in pieces {
        writer.write(piece.clone()).await?;
    }
    writer.finish();
    match reader.message().await? {
        Message::Ack => Ok(()),
        Message::Refused { code, reason } => Err(PeerError { code, reason }.into()),
        other => bail!("unexpected answer to raw bench data: {other:?}"),
    }
}

/// Tells the listener that this send is complete (`--once` listeners exit on it).
pub async fn done(pool: &Pool, addr: &EndpointAddr, files: u64) -> Result<()> {
    let (mut writer, mut reader) = pool.open(addr).await?;
    writer.message(&Message::Done { files }).await?;
    writer.finish();
    match reader.message().await? {
        Message::Ack => Ok(()),
        other => bail!("unexpected answer to done: {other:?}"),
    }
}

/// The files and tensors the listener at `addr` serves.
pub async fn catalog(pool: &Pool, addr: &EndpointAddr) -> Result<Vec<CatalogFile>> {
    let (mut writer, mut reader) = pool.open(addr).await?;
    writer.message(&Message::Catalog).await?;
    writer.finish();
    match reader.message().await? {
        Message::CatalogReply { files } => Ok(files),
        Message::Refused { code, reason } => Err(PeerError { code, reason }.into()),
        other => bail!("unexpected answer to a catalog request: {other:?}"),
    }
}

/// Sends `request` (a `Fetch` or `FetchMerged`) and receives the file the
/// listener offers in answer into the sink `accept` gives.
pub async fn fetch<F>(
    pool: &Pool,
    addr: &EndpointAddr,
    request: &Message,
    striping: Striping,
    progress: &Progress,
    accept: F,
) -> Result<Received>
where
    F: AsyncFnOnce(&Offer) -> Result<Box<dyn Sink>>,
{
    // A listener would stop reading a request this long, and the write fail
    // before its reason could be read.
    let encoded = request.encode();
    let len = encoded.len() - MESSAGE_PREFIX;
    if len > MAX_MESSAGE_BYTES as usize {
        bail!(
            "the request is {len} bytes; a listener takes at most {MAX_MESSAGE_BYTES} in one request (pull fewer tensors at once)"
        );
    }
    let (connection, mut writer, mut reader) = pool.open_on_connection(addr).await?;
    writer.write(encoded.into()).await?;
    let link = StripeLink::Dialer {
        connection: &connection,
        stripes: striping.stripes(link_stripes(&connection)),
    };
    receive_file(&mut writer, &mut reader, link, progress, accept).await
}

/// The chunk hashes of the file `name` (of `size` bytes, as its catalog says)
/// served at `addr`, checked to add up to the file hash the listener claims,
/// and the offer the listener makes for the whole file.
pub async fn hash_list(
    pool: &Pool,
    addr: &EndpointAddr,
    name: &str,
    size: u64,
) -> Result<(Offer, HashList)> {
    let (mut writer, mut reader) = pool.open(addr).await?;
    writer
        .message(&Message::FetchHashes {
            file: name.to_string(),
        })
        .await?;
    writer.finish();
    let chunks_in_file = size.div_ceil(CHUNK_SIZE);
    let mut chunks = Vec::new();
    loop {
        match reader.message().await? {
            Message::ChunkHashes { first, hashes } => {
                ensure!(
                    first == chunks.len() as u64 && first + hashes.len() as u64 <= chunks_in_file,
                    "protocol violation: hashes of chunks {first} to {} of a file of {chunks_in_file}",
                    first + hashes.len() as u64
                );
                for hash in &hashes {
                    chunks.push(parse_hash(hash)?);
                }
            }
            Message::FileHashes { offer, hash } => {
                ensure!(
                    offer.size == size,
                    "{name} is {} bytes now, not the {size} its catalog said",
                    offer.size
                );
                let list = HashList::verified(size, chunks, parse_hash(&hash)?)
                    .with_context(|| format!("the hashes of {name}"))?;
                return Ok((offer, list));
            }
            Message::Refused { code, reason } => return Err(PeerError { code, reason }.into()),
            other => bail!(
                "unexpected answer to a hash request: a {} message",
                other.kind()
            ),
        }
    }
}

/// Asks the listener at `addr` for `chunks` of the file `name` whose hash is
/// `hash`, and receives them into `file`; `done` hears of each chunk once it
/// is checked and written.
// Each argument is one independent input of the request; see `sources.rs`.
#[allow(clippy::too_many_arguments)]
pub async fn fetch_chunks(
    pool: &Pool,
    addr: &EndpointAddr,
    name: &str,
    file: &SharedFile,
    chunks: &[u32],
    compress: Compress,
    progress: &Progress,
    traffic: &mut Traffic,
    done: &mut (dyn FnMut(u32) + Send),
) -> Result<(), SetFailed> {
    let not_fatal = |error| SetFailed {
        error,
        fatal: false,
    };
    let (mut writer, mut reader) = pool.open(addr).await.map_err(not_fatal)?;
    let request = Message::FetchChunks {
        file: name.to_string(),
        hash: hash_hex(&file.hash()),
        chunks: chunks.to_vec(),
        compress,
    };
    writer.message(&request).await.map_err(not_fatal)?;
    writer.finish();
    file.receive(&mut reader, chunks, progress, traffic, done)
        .await
}
