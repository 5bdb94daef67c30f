//! Reading and writing frames on one QUIC stream pair. Every wait is bounded by
//! the connection's [`Liveness`], so a silent peer cannot hold a task forever.

use std::time::Duration;

use anyhow::{Result, bail};
use bytes::{Buf, BufMut, Bytes};
use iroh::endpoint::{RecvStream, SendStream};
use tokio::io::AsyncReadExt;

use super::errors::{io_read_failed, read_failed, write_failed};
use super::liveness::Liveness;
use super::wire::{
    BLOCK_CODED, BLOCK_STORED, Hash, MAX_BLOCK, MAX_MESSAGE_BYTES, Message, TAG_CHUNK,
    TAG_CODED_CHUNK, TAG_END, TAG_KEPT, TAG_MESSAGE, WireError,
};

/// Largest piece handed out of a chunk at once.
const MAX_READ: usize = 1 << 20;

pub enum Frame {
    Message(Message),
    /// A chunk's data follows: read it with [`FrameReader::data_into`] (as
    /// [`Block`]s where `coded`), then its hash.
    Chunk {
        index: u32,
        len: u32,
        coded: bool,
    },
    Kept {
        index: u32,
    },
    End {
        hash: Hash,
    },
}

/// The header of a block of a coded chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// `len` bytes follow as they are.
    Stored { len: u32 },
    /// `coded_len` bytes follow that decode to `len`.
    Coded { len: u32, coded_len: u32 },
}

impl Block {
    /// The bytes the block holds once decoded (never none: the header is checked).
    pub fn decoded_len(&self) -> u32 {
        match *self {
            Block::Stored { len } | Block::Coded { len, .. } => len,
        }
    }
}

pub struct FrameReader {
    recv: RecvStream,
    pending: Bytes,
    liveness: Liveness,
}

impl FrameReader {
    pub fn new(recv: RecvStream, liveness: Liveness) -> Self {
        FrameReader {
            recv,
            pending: Bytes::new(),
            liveness,
        }
    }

    /// Refills `pending`; false at the end of the stream.
    async fn fill(&mut self) -> Result<bool> {
        let read = self
            .liveness
            .bound(self.recv.read_chunk(MAX_READ))
            .await?
            .map_err(read_failed)?;
        match read {
            Some(bytes) => {
                self.pending = bytes;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            if self.pending.is_empty() && !self.fill().await? {
                bail!("stream ended in the middle of a frame");
            }
            let take = self.pending.len().min(buf.len() - filled);
            buf[filled..filled + take].copy_from_slice(&self.pending[..take]);
            self.pending.advance(take);
            filled += take;
        }
        Ok(())
    }

    async fn read_u32(&mut self) -> Result<u32> {
        let mut bytes = [0u8; 4];
        self.read_exact(&mut bytes).await?;
        Ok(u32::from_le_bytes(bytes))
    }

    /// The next frame, or `None` where the peer finished the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<Frame>> {
        if self.pending.is_empty() && !self.fill().await? {
            return Ok(None);
        }
        let tag = self.pending[0];
        self.pending.advance(1);
        let frame = match tag {
            TAG_MESSAGE => {
                let len = self.read_u32().await?;
                if len > MAX_MESSAGE_BYTES {
                    return Err(WireError::Bound(
                        "message length",
                        len.into(),
                        MAX_MESSAGE_BYTES.into(),
                    )
                    .into());
                }
                let mut body = vec![0u8; len as usize];
                self.read_exact(&mut body).await?;
                let message = Message::decode(&body)?;
                message.validate()?;
                Frame::Message(message)
            }
            TAG_CHUNK | TAG_CODED_CHUNK => {
                let index = self.read_u32().await?;
                let len = self.read_u32().await?;
                Frame::Chunk {
                    index,
                    len,
                    coded: tag == TAG_CODED_CHUNK,
                }
            }
            TAG_KEPT => Frame::Kept {
                index: self.read_u32().await?,
            },
            TAG_END => {
                let mut hash = [0u8; 32];
                self.read_exact(&mut hash).await?;
                Frame::End { hash }
            }
            other => return Err(WireError::UnknownTag(other).into()),
        };
        Ok(Some(frame))
    }

    /// The next message; anything else is a protocol violation.
    pub async fn message(&mut self) -> Result<Message> {
        match self.next().await? {
            Some(Frame::Message(message)) => Ok(message),
            Some(_) => Err(WireError::Unexpected("data where a message belongs").into()),
            None => bail!("peer closed the stream without answering"),
        }
    }

    /// Reads and drops `len` bytes, for raw bench streams.
    pub async fn discard(&mut self, mut len: u64) -> Result<()> {
        while len > 0 {
            if self.pending.is_empty() && !self.fill().await? {
                bail!("stream ended with {len} bytes still expected");
            }
            let take = (self.pending.len() as u64).min(len) as usize;
            self.pending.advance(take);
            len -= take as u64;
        }
        Ok(())
    }

    /// Appends up to `max` bytes of the current chunk's data to `buf`, at least
    /// one; returns how many. Reading straight into `buf` takes everything that
    /// has arrived in one call, where chunk by chunk would be a call per packet.
    pub async fn data_into(&mut self, buf: &mut Vec<u8>, max: usize) -> Result<usize> {
        if !self.pending.is_empty() {
            let take = self.pending.len().min(max);
            buf.extend_from_slice(&self.pending[..take]);
            self.pending.advance(take);
            return Ok(take);
        }
        let mut room = (&mut *buf).limit(max);
        let read = self
            .liveness
            .bound(self.recv.read_buf(&mut room))
            .await?
            .map_err(io_read_failed)?;
        if read == 0 {
            bail!("stream ended in the middle of a chunk");
        }
        Ok(read)
    }

    /// The header of the next block of a coded chunk, its lengths bounded: a
    /// block decodes to at most [`MAX_BLOCK`] bytes, and a coded block is
    /// smaller than what it decodes to (else it would have been stored).
    pub async fn block(&mut self) -> Result<Block> {
        let mut kind = [0u8];
        self.read_exact(&mut kind).await?;
        let len = self.read_u32().await?;
        if len == 0 || len > MAX_BLOCK {
            return Err(WireError::Bound("block length", len.into(), MAX_BLOCK.into()).into());
        }
        match kind[0] {
            BLOCK_STORED => Ok(Block::Stored { len }),
            BLOCK_CODED => {
                let coded_len = self.read_u32().await?;
                if coded_len >= len {
                    return Err(WireError::Bound(
                        "coded block length",
                        coded_len.into(),
                        u64::from(len) - 1,
                    )
                    .into());
                }
                Ok(Block::Coded { len, coded_len })
            }
            other => Err(WireError::UnknownTag(other).into()),
        }
    }

    /// Appends exactly `len` bytes of the current block to `buf`.
    pub async fn exact_into(&mut self, buf: &mut Vec<u8>, len: usize) -> Result<()> {
        let mut read = 0;
        while read < len {
            read += self.data_into(buf, len - read).await?;
        }
        Ok(())
    }

    pub async fn hash(&mut self) -> Result<Hash> {
        let mut hash = [0u8; 32];
        self.read_exact(&mut hash).await?;
        Ok(hash)
    }

    pub fn stop(&mut self, code: u32) {
        self.recv.stop(code.into()).ok();
    }
}

pub struct FrameWriter {
    send: SendStream,
    liveness: Liveness,
}

impl FrameWriter {
    pub fn new(send: SendStream, liveness: Liveness) -> Self {
        FrameWriter { send, liveness }
    }

    /// How this side's waits on its peer are bounded.
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    pub async fn write(&mut self, bytes: Bytes) -> Result<()> {
        self.write_all(&mut [bytes]).await
    }

    /// Writes `pieces` in one go: the peer gets them in as few packets as they fit.
    pub async fn write_all(&mut self, pieces: &mut [Bytes]) -> Result<()> {
        self.liveness
            .bound(self.send.write_all_chunks(pieces))
            .await?
            .map_err(write_failed)
    }

    pub async fn message(&mut self, message: &Message) -> Result<()> {
        self.write(Bytes::from(message.encode())).await
    }

    pub fn finish(&mut self) {
        self.send.finish().ok();
    }

    /// Finishes the stream and waits until the peer has everything: closing the
    /// connection right after `finish` could drop the last message.
    pub async fn finish_and_flush(&mut self) {
        self.send.finish().ok();
        self.liveness.bound(self.send.stopped()).await.ok();
    }

    /// [`Self::finish_and_flush`], waiting at most `limit`.
    pub async fn finish_and_flush_within(&mut self, limit: Duration) {
        self.send.finish().ok();
        tokio::time::timeout(limit, self.send.stopped()).await.ok();
    }

    pub fn reset(&mut self, code: u32) {
        self.send.reset(code.into()).ok();
    }
}
