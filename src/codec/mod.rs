//! Lossless coding of a piece of a tensor file, by what its bytes hold.
//!
//! A piece is described by regions: little-endian floats of a given width are
//! split into byte planes ([`planes`]) and each plane that pays is entropy
//! coded ([`rans`]); other data (headers, integers) goes through zstd; floats
//! packed below a byte are stored as they are.
//!
//! A coded piece is a run of sections, each a type byte and a little-endian
//! u32 decoded length, then:
//! - `STORED`: the bytes;
//! - `ZSTD`: a u32 coded length and a zstd frame;
//! - `PLANES`: the element width (u8), then per plane a coding byte (`STORED`
//!   and the plane's bytes, or `RANS`, a u32 coded length and the coding).

mod layout;
mod planes;
mod rans;

use anyhow::{Context, Result, bail, ensure};

pub use layout::Layout;

const STORED: u8 = 0;
const ZSTD: u8 = 1;
const PLANES: u8 = 2;
const RANS: u8 = 3;

/// A piece is sent coded only when coding saves at least this share.
const MIN_SAVING: f64 = 0.05;
/// A plane is entropy coded only when that saves at least this share of it:
/// below, the decoder's time costs more than the bytes saved.
const MIN_PLANE_SAVING: f64 = 0.02;
/// zstd's fastest level that still finds the repeats in headers and integers.
const ZSTD_LEVEL: i32 = 1;
/// Regions shorter than this are stored: a section header and a coder's
/// tables would eat what they save.
const MIN_CODED_REGION: usize = 256;

/// What the bytes of a region hold, as far as coding is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Little-endian IEEE floats (or bfloat16) of 1, 2, 4 or 8 bytes.
    Float { width: u8 },
    /// Anything else that may repeat: headers, integers, booleans.
    General,
    /// Data that does not compress (floats packed below a byte): sent as is.
    Stored,
}

/// `len` consecutive bytes of one kind; a float region starts on an element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub len: usize,
    pub kind: Kind,
}

/// Codes pieces, keeping its buffers and zstd context between them.
pub struct Encoder {
    zstd: zstd::bulk::Compressor<'static>,
    planes: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Result<Encoder> {
        Ok(Encoder {
            zstd: zstd::bulk::Compressor::new(ZSTD_LEVEL).context("cannot start zstd")?,
            planes: Vec::new(),
        })
    }

    /// Codes `data`, whose bytes `regions` describe in order, into `out`;
    /// false (and `out` undefined) when that would save less than
    /// [`MIN_SAVING`], so the piece goes as is.
    pub fn encode(&mut self, data: &[u8], regions: &[Region], out: &mut Vec<u8>) -> bool {
        out.clear();
        let budget = (data.len() as f64 * (1.0 - MIN_SAVING)) as usize;
        if !regions
            .iter()
            .any(|region| region.kind != Kind::Stored && region.len >= MIN_CODED_REGION)
        {
            return false;
        }
        let mut at = 0;
        for region in regions {
            let Some(bytes) = data.get(at..at + region.len) else {
                return false;
            };
            at += region.len;
            match region.kind {
                _ if bytes.len() < MIN_CODED_REGION => stored(bytes, out),
                Kind::Stored => stored(bytes, out),
                Kind::General => self.general(bytes, out),
                Kind::Float { width } => {
                    let width = usize::from(width);
                    let whole = bytes.len() / width * width;
                    self.floats(&bytes[..whole], width, out);
                    if whole < bytes.len() {
                        stored(&bytes[whole..], out);
                    }
                }
            }
            if out.len() > budget {
                return false;
            }
        }
        at == data.len()
    }

    fn general(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let counts = rans::histogram(bytes);
        // Close to uniform bytes: zstd would only spend time finding that out.
        if rans::estimated_size(&counts) as f64 > bytes.len() as f64 * (1.0 - MIN_SAVING) {
            return stored(bytes, out);
        }
        match self.zstd.compress(bytes) {
            Ok(coded) if coded.len() < bytes.len() => {
                section_header(ZSTD, bytes.len(), out);
                out.extend_from_slice(&(coded.len() as u32).to_le_bytes());
                out.extend_from_slice(&coded);
            }
            _ => stored(bytes, out),
        }
    }

    fn floats(&mut self, bytes: &[u8], width: usize, out: &mut Vec<u8>) {
        self.planes.clear();
        planes::split(bytes, width, &mut self.planes);
        section_header(PLANES, bytes.len(), out);
        out.push(width as u8);
        for plane in self.planes.chunks_exact(bytes.len() / width) {
            let counts = rans::histogram(plane);
            let estimate = rans::estimated_size(&counts) as f64;
            if estimate < plane.len() as f64 * (1.0 - MIN_PLANE_SAVING) {
                out.push(RANS);
                let length_at = out.len();
                out.extend_from_slice(&[0; 4]);
                rans::encode(plane, &counts, out);
                let coded = (out.len() - length_at - 4) as u32;
                out[length_at..length_at + 4].copy_from_slice(&coded.to_le_bytes());
            } else {
                out.push(STORED);
                out.extend_from_slice(plane);
            }
        }
    }
}

fn stored(bytes: &[u8], out: &mut Vec<u8>) {
    section_header(STORED, bytes.len(), out);
    out.extend_from_slice(bytes);
}

fn section_header(kind: u8, len: usize, out: &mut Vec<u8>) {
    out.push(kind);
    out.extend_from_slice(&(len as u32).to_le_bytes());
}

/// Decodes pieces, keeping its buffers and zstd context between them.
pub struct Decoder {
    zstd: zstd::bulk::Decompressor<'static>,
    planes: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Result<Decoder> {
        Ok(Decoder {
            zstd: zstd::bulk::Decompressor::new().context("cannot start zstd")?,
            planes: Vec::new(),
        })
    }

    /// Decodes a piece coded by [`Encoder::encode`] into `out`, which must
    /// come out exactly `len` bytes long: a piece never grows past what its
    /// header declared, whatever the peer sent.
    pub fn decode(&mut self, coded: &[u8], len: usize, out: &mut Vec<u8>) -> Result<()> {
        let base = out.len();
        let mut input = Input { bytes: coded };
        while !input.bytes.is_empty() {
            let kind = input.u8()?;
            let section = input.u32()? as usize;
            ensure!(
                out.len() - base + section <= len,
                "a coded piece holds more than its declared {len} bytes"
            );
            match kind {
                STORED => out.extend_from_slice(input.take(section)?),
                ZSTD => {
                    let frame_len = input.u32()? as usize;
                    let frame = input.take(frame_len)?;
                    let start = out.len();
                    out.resize(start + section, 0);
                    let written = self
                        .zstd
                        .decompress_to_buffer(frame, &mut out[start..])
                        .context("a zstd section does not decode")?;
                    ensure!(written == section, "a zstd section is short");
                }
                PLANES => self.floats(&mut input, section, out)?,
                other => bail!("unknown section type {other}"),
            }
        }
        ensure!(
            out.len() - base == len,
            "a coded piece holds {} bytes, not its declared {len}",
            out.len() - base
        );
        Ok(())
    }

    fn floats(&mut self, input: &mut Input, len: usize, out: &mut Vec<u8>) -> Result<()> {
        let width = usize::from(input.u8()?);
        ensure!(
            matches!(width, 1 | 2 | 4 | 8) && len.is_multiple_of(width),
            "a float section of {len} bytes in elements of {width}"
        );
        let count = len / width;
        self.planes.clear();
        self.planes.resize(len, 0);
        for plane in self.planes.chunks_exact_mut(count.max(1)).take(width) {
            match input.u8()? {
                STORED => plane.copy_from_slice(input.take(count)?),
                RANS => {
                    let coded_len = input.u32()? as usize;
                    rans::decode(input.take(coded_len)?, count, plane)?;
                }
                other => bail!("unknown plane coding {other}"),
            }
        }
        let start = out.len();
        out.resize(start + len, 0);
        planes::join(&self.planes, width, &mut out[start..]);
        Ok(())
    }
}

/// The unread rest of a coded piece.
struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        ensure!(len <= self.bytes.len(), "a coded piece ends early");
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bf16_like(count: usize) -> Vec<u8> {
        // Small weights around zero: few exponents, random mantissas and signs.
        let mut state = 0x2545f4914f6cdd1du64;
        let mut data = Vec::with_capacity(count * 2);
        for _ in 0..count {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let exponent = 118 + (state >> 60) as u16 % 4 + u16::from((state >> 58) & 3 == 0);
            let value = ((state as u16 & 1) << 15) | (exponent << 7) | ((state >> 8) as u16 & 0x7f);
            data.extend_from_slice(&value.to_le_bytes());
        }
        data
    }

    fn round_trip(data: &[u8], regions: &[Region]) -> Option<usize> {
        let mut coded = Vec::new();
        if !Encoder::new().unwrap().encode(data, regions, &mut coded) {
            return None;
        }
        let mut out = vec![9u8; 3];
        Decoder::new()
            .unwrap()
            .decode(&coded, data.len(), &mut out)
            .expect("decodes");
        assert_eq!(&out[3..], data);
        Some(coded.len())
    }

    #[test]
    fn float_weights_shrink_by_their_exponents() {
        let data = bf16_like(1 << 19);
        let coded = round_trip(
            &data,
            &[Region {
                len: data.len(),
                kind: Kind::Float { width: 2 },
            }],
        )
        .expect("bf16 weights pay");
        assert!(coded < data.len() * 7 / 10, "{coded} of {}", data.len());
    }

    #[test]
    fn random_and_stored_pieces_go_as_they_are() {
        let data: Vec<u8> = (0..1u32 << 16)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert_eq!(
            round_trip(
                &data,
                &[Region {
                    len: data.len(),
                    kind: Kind::Float { width: 4 }
                }]
            ),
            None
        );
        assert_eq!(
            round_trip(
                &data,
                &[Region {
                    len: data.len(),
                    kind: Kind::Stored
                }]
            ),
            None
        );
    }

    #[test]
    fn mixed_regions_round_trip() {
        let mut data =
            br#"{"a":{"dtype":"BF16","shape":[4096],"data_offsets":[0,8192]}}       "#.repeat(8);
        let header = data.len();
        data.extend(bf16_like(3000));
        data.push(1);
        data.extend(std::iter::repeat_n(0u8, 4000));
        let regions = [
            Region {
                len: header,
                kind: Kind::General,
            },
            Region {
                len: 6001,
                kind: Kind::Float { width: 2 },
            },
            Region {
                len: 4000,
                kind: Kind::General,
            },
        ];
        assert!(round_trip(&data, &regions).is_some());
    }

    #[test]
    fn a_piece_larger_than_declared_is_refused() {
        let data = vec![0u8; 10_000];
        let mut coded = Vec::new();
        assert!(Encoder::new().unwrap().encode(
            &data,
            &[Region {
                len: data.len(),
                kind: Kind::General
            }],
            &mut coded
        ));
        let mut out = Vec::new();
        assert!(
            Decoder::new()
                .unwrap()
                .decode(&coded, 9_999, &mut out)
                .is_err()
        );
        assert!(out.len() <= 9_999);
    }

    proptest! {
        #[test]
        fn hostile_pieces_never_panic(coded in proptest::collection::vec(any::<u8>(), 0..600), len in 0usize..5000) {
            let mut out = Vec::new();
            let _ = Decoder::new().unwrap().decode(&coded, len, &mut out);
            prop_assert!(out.len() <= len);
        }

        #[test]
        fn any_piece_round_trips(data in proptest::collection::vec(0u8..8, 0..3000), split in 0usize..3000) {
            let split = split.min(data.len()) / 4 * 4;
            let regions = [
                Region { len: split, kind: Kind::Float { width: 4 } },
                Region { len: data.len() - split, kind: Kind::General },
            ];
            round_trip(&data, &regions);
        }
    }
}
