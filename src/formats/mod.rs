//! The file formats tensor-iroh moves: `.npy`, `.safetensors` and the
//! `*.safetensors.index.json` of a sharded checkpoint.
//!
//! Opening a file validates it completely from its header and its size, without
//! reading the tensor data: a [`TensorFile`] says where every tensor lives in the
//! file, and the transfer code reads those bytes when it sends them.

mod npy;
mod npy_conversion;
mod safetensors;

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::codec::{Kind, Layout};
use crate::file_version::FileVersion;

pub use self::npy_conversion::NpyConversion;
pub use self::safetensors::SafetensorsBuilder;

/// Index files are small JSON documents; anything larger is not one.
const MAX_INDEX_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Npy,
    Safetensors,
    /// `*.safetensors.index.json`: the weight map of a sharded checkpoint.
    Index,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Npy => "npy",
            Format::Safetensors => "safetensors",
            Format::Index => "index",
        }
    }

    /// What a file name of this format ends in, after its dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Npy => "npy",
            Format::Safetensors => "safetensors",
            Format::Index => "safetensors.index.json",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        if name.ends_with(".safetensors.index.json") {
            Some(Format::Index)
        } else if name.ends_with(".safetensors") {
            Some(Format::Safetensors)
        } else if name.ends_with(".npy") {
            Some(Format::Npy)
        } else {
            None
        }
    }
}

/// One tensor of a file: its name, dtype in safetensors spelling (`F32`, `BF16`,
/// `C64` for complex npy data), shape, and where its bytes are in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub data: Range<u64>,
}

impl Tensor {
    pub fn byte_len(&self) -> u64 {
        self.data.end - self.data.start
    }
}

/// How the codec treats elements of `dtype` (safetensors spelling) stored
/// little-endian: floats by their byte planes (fp8 is one plane), floats
/// packed below a byte as they are (their bits cross byte boundaries),
/// anything else as general data.
pub fn coding_kind(dtype: &str) -> Kind {
    match dtype {
        "BF16" | "F16" => Kind::Float { width: 2 },
        "F32" | "C64" => Kind::Float { width: 4 },
        "F64" | "C128" => Kind::Float { width: 8 },
        fp8 if fp8.starts_with("F8") => Kind::Float { width: 1 },
        small if small.starts_with("F6") || small.starts_with("F4") => Kind::Stored,
        _ => Kind::General,
    }
}

/// How an `.npy` file lays out its elements, needed to convert it to safetensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyLayout {
    pub descr: String,
    pub item_size: u64,
    /// Complex numbers swap their two halves separately.
    pub swap_unit: u64,
    pub big_endian: bool,
    pub fortran_order: bool,
}

/// A validated tensor file, described without loading its data.
#[derive(Debug, Clone)]
pub struct TensorFile {
    pub path: PathBuf,
    pub format: Format,
    pub size: u64,
    /// As validated: a file that differs from this changed on disk since.
    pub version: FileVersion,
    /// The bytes before the first tensor's data (the whole file for an index).
    pub header: Vec<u8>,
    pub tensors: Vec<Tensor>,
    /// The safetensors `__metadata__` map.
    pub metadata: Option<BTreeMap<String, String>>,
    pub npy: Option<NpyLayout>,
}

impl TensorFile {
    /// Opens and validates `path`; the error names the file and says what is wrong.
    pub fn open(path: &Path) -> Result<TensorFile> {
        std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: not a file name tensor-iroh can use", path.display()))?;
        let format = Format::from_name(name).with_context(|| {
            format!(
                "{}: not a .npy, .safetensors or .safetensors.index.json file",
                path.display()
            )
        })?;
        // Without O_NONBLOCK, opening a FIFO waits for a writer, forever; on a
        // regular file the flag changes nothing.
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("cannot read {}", path.display()))?;
        if !meta.is_file() {
            bail!("{}: not a regular file", path.display());
        }
        let parsed = match format {
            Format::Npy => npy::parse(&file, meta.len(), stem(name)),
            Format::Safetensors => safetensors::parse(&file, meta.len()),
            Format::Index => parse_index(&file, meta.len()),
        }
        .with_context(|| format!("{} is not a valid {} file", path.display(), format.as_str()))?;
        Ok(TensorFile {
            path: path.to_path_buf(),
            format,
            size: meta.len(),
            version: FileVersion::of_metadata(&meta),
            header: parsed.header,
            tensors: parsed.tensors,
            metadata: parsed.metadata,
            npy: parsed.npy,
        })
    }

    /// The file name without its format's extension: a tensor's name for `.npy`.
    pub fn stem(&self) -> &str {
        let name = self.file_name();
        stem(name)
    }

    pub fn file_name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    }

    /// Where this file's tensors lie by kind, to code pieces of it as it is
    /// sent. Big-endian `.npy` data is left to general coding: byte planes
    /// assume little-endian elements.
    pub fn layout(&self) -> Layout {
        let mut layout = Layout::default();
        if self.npy.as_ref().is_some_and(|npy| npy.big_endian) {
            return layout;
        }
        for tensor in &self.tensors {
            layout.push(
                tensor.data.start,
                tensor.byte_len(),
                coding_kind(&tensor.dtype),
            );
        }
        layout
    }

    /// Fails when the file on disk is no longer the one that was validated.
    pub fn check_unchanged(&self) -> Result<()> {
        let meta = std::fs::metadata(&self.path)
            .with_context(|| format!("{} is gone", self.path.display()))?;
        if FileVersion::of_metadata(&meta) != self.version {
            bail!(
                "{} changed on disk since it was opened",
                self.path.display()
            );
        }
        Ok(())
    }
}

fn stem(name: &str) -> &str {
    for ext in [".safetensors.index.json", ".safetensors", ".npy"] {
        if let Some(stem) = name.strip_suffix(ext) {
            return stem;
        }
    }
    name
}

/// What a format parser finds in a file.
#[derive(Debug)]
struct Parsed {
    header: Vec<u8>,
    tensors: Vec<Tensor>,
    metadata: Option<BTreeMap<String, String>>,
    npy: Option<NpyLayout>,
}

fn parse_index(file: &File, size: u64) -> Result<Parsed> {
    if size > MAX_INDEX_BYTES {
        bail!("an index of {size} bytes is larger than {MAX_INDEX_BYTES}");
    }
    let mut text = Vec::with_capacity(size as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(file, size), &mut text)?;
    let json: serde_json::Value = serde_json::from_slice(&text).context("invalid JSON")?;
    if !json.get("weight_map").is_some_and(|map| map.is_object()) {
        bail!("no \"weight_map\" object");
    }
    Ok(Parsed {
        header: text,
        tensors: Vec::new(),
        metadata: None,
        npy: None,
    })
}

/// The tensor files in `dir` (not recursive), sorted by name; index files too
/// when `with_index` holds.
pub fn files_in(dir: &Path, with_index: bool) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let wanted = match Format::from_name(name) {
            Some(Format::Index) => with_index,
            Some(_) => true,
            None => false,
        };
        if wanted && !name.starts_with('.') && entry.file_type().is_ok_and(|t| t.is_file()) {
            files.push(entry.path());
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("{} holds no .npy or .safetensors files", dir.display());
    }
    Ok(files)
}

/// Reads exactly `len` bytes at `offset`, failing on a short file.
pub fn read_exact_at(file: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    fn parse_bytes(format: Format, bytes: &[u8]) -> Result<Parsed> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        let size = bytes.len() as u64;
        match format {
            Format::Npy => npy::parse(file.as_file(), size, "t"),
            Format::Safetensors => safetensors::parse(file.as_file(), size),
            Format::Index => parse_index(file.as_file(), size),
        }
    }

    proptest! {
        #[test]
        fn npy_headers_never_panic(dict in "\\{[ -~]{0,120}\\}", version in 1u8..4, tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = b"\x93NUMPY".to_vec();
            bytes.push(version);
            bytes.push(0);
            if version == 1 {
                bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
            } else {
                bytes.extend_from_slice(&(dict.len() as u32).to_le_bytes());
            }
            bytes.extend_from_slice(dict.as_bytes());
            bytes.extend_from_slice(&tail);
            let _ = parse_bytes(Format::Npy, &bytes);
        }

        #[test]
        fn safetensors_headers_never_panic(json in "\\{[ -~]{0,160}\\}", claimed in any::<u64>(), honest in any::<bool>(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let len = if honest { json.len() as u64 } else { claimed };
            let mut bytes = len.to_le_bytes().to_vec();
            bytes.extend_from_slice(json.as_bytes());
            bytes.extend_from_slice(&tail);
            let _ = parse_bytes(Format::Safetensors, &bytes);
        }

        #[test]
        fn random_files_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            for format in [Format::Npy, Format::Safetensors, Format::Index] {
                let _ = parse_bytes(format, &bytes);
            }
        }
    }
}
