//! The coding stage of a transfer (`--compress auto|on|off`): which pieces
//! are coded ([`super::governor`] decides for `auto`), coding them into
//! blocks on the sender and decoding them on the receiver, with
//! [`crate::codec`].

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Result, bail};
use bytes::Bytes;
use iroh::endpoint::Connection;
use serde::{Deserialize, Serialize};

use super::governor::{Governor, cores};

use super::wire::coded_block_header;
use crate::codec::{Decoder, Encoder, Layout, Region};

/// The `--compress` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compress {
    /// Code while the link is slower than the coder (see the module comment).
    #[default]
    Auto,
    /// Code every piece that shrinks by 5 % or more.
    On,
    /// Send every byte as it is.
    Off,
}

impl FromStr for Compress {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Compress> {
        match text {
            "auto" => Ok(Compress::Auto),
            "on" => Ok(Compress::On),
            "off" => Ok(Compress::Off),
            other => bail!("unknown compression setting {other:?}: auto, on or off"),
        }
    }
}

impl fmt::Display for Compress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compress::Auto => "auto",
            Compress::On => "on",
            Compress::Off => "off",
        })
    }
}

/// The coding stage of a transfer: its setting, and the governor `auto` asks
/// (none where coding is off).
#[derive(Clone)]
pub struct Coding {
    mode: Compress,
    governor: Option<Arc<Governor>>,
}

impl Coding {
    pub fn new(mode: Compress, governor: Arc<Governor>) -> Coding {
        let governor = (mode != Compress::Off).then_some(governor);
        Coding { mode, governor }
    }

    /// No coding: chunks go as they are, as protocol version 1 sent them.
    pub fn off() -> Coding {
        Coding {
            mode: Compress::Off,
            governor: None,
        }
    }

    /// Whether chunks go as blocks, each coded or stored.
    pub fn in_blocks(&self) -> bool {
        self.mode != Compress::Off
    }

    /// The coded block for `piece`, the file's bytes from `offset` (which
    /// `layout` describes), header included; `None` where coding saves too
    /// little, and the piece goes stored. Takes a core for a few milliseconds.
    pub fn code(&self, piece: &[u8], offset: u64, layout: &Layout) -> Option<Bytes> {
        let started = Instant::now();
        let block = with_pooled(&CODERS, |coder: &mut PieceCoder| {
            coder.code(piece, offset, layout)
        });
        if let Some(governor) = &self.governor {
            let coded_len = block.as_ref().map_or(piece.len(), Bytes::len);
            governor.coded(piece.len(), coded_len, started.elapsed());
        }
        block
    }

    /// [`Coding::code`] on a blocking thread, with at most as many pieces
    /// coded at once as the machine has cores.
    pub async fn code_elsewhere(
        &self,
        piece: Bytes,
        offset: u64,
        layout: Arc<Layout>,
    ) -> Option<Bytes> {
        let governor = self.governor.as_ref()?;
        let _slot = governor.coding_slot(self.mode == Compress::Auto).await?;
        let coding = self.clone();
        tokio::task::spawn_blocking(move || coding.code(&piece, offset, &layout))
            .await
            .ok()
            .flatten()
    }

    /// Whether to code the next piece of data going out now, on `connection`
    /// (whose pace `auto` follows; none for tests of the setting alone).
    pub fn should_code(&self, connection: Option<&Connection>) -> bool {
        let Some(governor) = &self.governor else {
            return false;
        };
        match self.mode {
            Compress::Off => false,
            Compress::On => true,
            Compress::Auto => governor.verdict(connection),
        }
    }
}

/// Coders and decoders kept for reuse, a few megabytes each (zstd contexts,
/// plane buffers): no more than the machine has cores, whatever the threads.
static CODERS: Mutex<Vec<PieceCoder>> = Mutex::new(Vec::new());
static DECODERS: Mutex<Vec<Option<Decoder>>> = Mutex::new(Vec::new());

/// Runs `work` with an item of `pool` (a new one where none is free), and
/// keeps the item for the next caller unless the pool holds enough.
fn with_pooled<T: Default, R>(pool: &Mutex<Vec<T>>, work: impl FnOnce(&mut T) -> R) -> R {
    let mut item = pool
        .lock()
        .ok()
        .and_then(|mut free| free.pop())
        .unwrap_or_default();
    let result = work(&mut item);
    if let Ok(mut free) = pool.lock()
        && (free.len() as f64) < cores()
    {
        free.push(item);
    }
    result
}

#[derive(Default)]
struct PieceCoder {
    encoder: Option<Encoder>,
    regions: Vec<Region>,
    coded: Vec<u8>,
}

impl PieceCoder {
    fn code(&mut self, piece: &[u8], offset: u64, layout: &Layout) -> Option<Bytes> {
        let encoder = match &mut self.encoder {
            Some(encoder) => encoder,
            None => self.encoder.insert(Encoder::new().ok()?),
        };
        layout.regions(offset, piece.len(), &mut self.regions);
        if !encoder.encode(piece, &self.regions, &mut self.coded) {
            return None;
        }
        let mut block = Vec::with_capacity(9 + self.coded.len());
        block.extend_from_slice(&coded_block_header(
            piece.len() as u32,
            self.coded.len() as u32,
        ));
        block.extend_from_slice(&self.coded);
        Some(Bytes::from(block))
    }
}

/// Decodes a block of `len` bytes coded by [`Coding::code`], appending it to
/// `out`. Runs on the receiver's checking thread.
pub fn decode(coded: &[u8], len: usize, out: &mut Vec<u8>) -> Result<()> {
    with_pooled(&DECODERS, |decoder: &mut Option<Decoder>| {
        let decoder = match decoder {
            Some(decoder) => decoder,
            None => decoder.insert(Decoder::new()?),
        };
        decoder.decode(coded, len, out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_as_written() {
        for mode in [Compress::Auto, Compress::On, Compress::Off] {
            assert_eq!(mode.to_string().parse::<Compress>().unwrap(), mode);
        }
        assert!("fast".parse::<Compress>().is_err());
    }

    #[test]
    fn off_never_codes_and_on_always_does() {
        let governor = Arc::new(Governor::default());
        assert!(!Coding::off().should_code(None));
        assert!(!Coding::new(Compress::Off, governor.clone()).should_code(None));
        assert!(Coding::new(Compress::On, governor).should_code(None));
    }

    #[test]
    fn coded_blocks_decode() {
        let piece: Vec<u8> = (0..1u32 << 18)
            .flat_map(|i| ((i % 5) as u16 | 0x3c00).to_le_bytes())
            .collect();
        let mut layout = Layout::default();
        layout.push(
            0,
            piece.len() as u64,
            crate::codec::Kind::Float { width: 2 },
        );
        let block = Coding::new(Compress::On, Arc::default())
            .code(&piece, 0, &layout)
            .expect("it pays");
        assert_eq!(block[0], super::super::wire::BLOCK_CODED);
        let mut decoded = Vec::new();
        decode(&block[9..], piece.len(), &mut decoded).unwrap();
        assert_eq!(decoded, piece);
    }
}
