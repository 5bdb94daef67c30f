//! The files a listener serves with `--serve`, and the sources it sends for a
//! pull: a whole file, a safetensors file of selected tensors, or one safetensors
//! file merging tensors of several files.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;

use crate::codec::{Kind, Layout};
use crate::formats::{
    Format, NpyConversion, SafetensorsBuilder, TensorFile, coding_kind, files_in,
};
use crate::hash_lists::HashLists;
use crate::protocol::errors::ErrorCode;
use crate::protocol::transfer::{Segment, Source, file_offer};
use crate::protocol::wire::{CatalogFile, Offer, TensorEntry, TensorRef};

pub struct Catalog {
    /// A file found changed on disk is validated again and served as it is
    /// now: a checkpoint rewritten under a running listener stays pullable.
    files: RwLock<Vec<Arc<TensorFile>>>,
    /// Each file's place in `files` by its served name, which never changes:
    /// a request names files, and a scan per name would make a pull of many
    /// files quadratic.
    places: HashMap<String, usize>,
    /// The chunk hashes of files pulled from several sources at once.
    pub hash_lists: HashLists,
}

impl Catalog {
    /// Validates every file named or found (not recursively) in a named directory.
    pub fn open(paths: &[PathBuf]) -> Result<Catalog> {
        let mut files: Vec<TensorFile> = Vec::new();
        let mut places: HashMap<String, usize> = HashMap::new();
        for path in paths {
            let found = if path.is_dir() {
                files_in(path, false)?
            } else {
                vec![path.clone()]
            };
            for path in found {
                let file = TensorFile::open(&path)?;
                if file.format == Format::Index {
                    bail!("{}: index files are not served", path.display());
                }
                if let Some(&twin) = places.get(file.file_name()) {
                    bail!(
                        "{} and {} have the same name; serve files with distinct names",
                        files[twin].path.display(),
                        path.display()
                    );
                }
                places.insert(file.file_name().to_string(), files.len());
                files.push(file);
            }
        }
        Ok(Catalog {
            files: RwLock::new(files.into_iter().map(Arc::new).collect()),
            places,
            hash_lists: HashLists::default(),
        })
    }

    pub fn files(&self) -> Vec<Arc<TensorFile>> {
        self.files.read().expect("catalog lock").clone()
    }

    /// The served files as they are now; one that changed into something that
    /// cannot be served (half written, say) is left out until it can.
    pub fn entries(&self) -> Vec<CatalogFile> {
        self.files()
            .iter()
            .filter_map(|file| self.file(file.file_name()).ok())
            .map(|file| CatalogFile {
                name: file.file_name().to_string(),
                format: file.format.as_str().to_string(),
                size: file.size,
                tensors: file
                    .tensors
                    .iter()
                    .map(|t| TensorEntry {
                        name: t.name.clone(),
                        dtype: t.dtype.clone(),
                        shape: t.shape.clone(),
                        bytes: t.byte_len(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// The served file `name`, validated again if it changed on disk.
    fn file(&self, name: &str) -> Result<Arc<TensorFile>> {
        let place = *self.places.get(name).ok_or_else(|| {
            ErrorCode::UnknownFile.error(format!("no served file is named {name:?}"))
        })?;
        let file = self.files.read().expect("catalog lock")[place].clone();
        if file.check_unchanged().is_ok() {
            return Ok(file);
        }
        let fresh = TensorFile::open(&file.path)
            .map_err(|err| by_served_name(&file, err))
            .with_context(|| {
                ErrorCode::SourceChanged.error(format!(
                    "{name} changed on disk and cannot be served as it is now"
                ))
            })?;
        if fresh.format != file.format {
            bail!(
                ErrorCode::SourceChanged
                    .error(format!("{name} changed on disk into another format"))
            );
        }
        let fresh = Arc::new(fresh);
        let served = &mut self.files.write().expect("catalog lock")[place];
        // Unless another request validated it again meanwhile.
        if Arc::ptr_eq(served, &file) {
            *served = fresh.clone();
        }
        Ok(fresh)
    }

    /// The served file `name` whole: the file as validated now (its version
    /// keys its hash list) and its source.
    pub fn whole(&self, name: &str) -> Result<(Arc<TensorFile>, Source)> {
        let file = self.file(name)?;
        let source = whole_file(&file, whole_file_offer(&file, name.to_string()))?;
        Ok((file, source))
    }

    /// The source for a served file, whole or reduced to the named tensors.
    pub fn source(&self, name: &str, tensors: Option<&[String]>) -> Result<Source> {
        let file = self.file(name)?;
        let Some(names) = tensors else {
            return whole_file(&file, whole_file_offer(&file, name.to_string()));
        };
        let held: HashSet<&str> = file.tensors.iter().map(|t| t.name.as_str()).collect();
        if let Some(missing) = names.iter().find(|n| !held.contains(n.as_str())) {
            bail!(
                ErrorCode::UnknownTensor.error(format!("{name} has no tensor named {missing:?}"))
            );
        }
        let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
        // Every tensor of the file is the file itself (the one selection an .npy
        // file has): sent as it is, it arrives byte for byte, where a rebuilt
        // header would differ in key order.
        if wanted.len() == held.len() {
            return whole_file(&file, whole_file_offer(&file, name.to_string()));
        }
        if file.format == Format::Npy {
            bail!(ErrorCode::UnknownTensor.error(format!(
                "{name} holds only the tensor {:?}",
                file.tensors[0].name
            )));
        }
        let handle = Arc::new(open(&file)?);
        let mut builder = SafetensorsBuilder::new(file.metadata.clone());
        let mut segments = Vec::new();
        let mut kinds = Vec::new();
        for tensor in file
            .tensors
            .iter()
            .filter(|t| wanted.contains(t.name.as_str()))
        {
            builder.push(
                &tensor.name,
                &tensor.dtype,
                &tensor.shape,
                tensor.byte_len(),
            )?;
            push_range(&mut segments, &handle, tensor.data.start, tensor.byte_len());
            kinds.push((tensor.byte_len(), coding_kind(&tensor.dtype)));
        }
        let header = builder.header();
        let layout = layout_after(header.len() as u64, &kinds);
        segments.insert(0, Segment::Bytes(Bytes::from(header.clone())));
        Ok(Source::new(
            format!("{}.safetensors", file.stem()),
            "safetensors",
            wanted.len() as u64,
            &header,
            segments,
        )
        .with_layout(layout))
    }

    /// One safetensors file holding the given tensors of any served files, in the
    /// order given; `.npy` tensors become little-endian C order.
    pub fn merged(&self, refs: &[TensorRef]) -> Result<Source> {
        // Each file once, with its tensors by name: a request names thousands.
        let mut files: HashMap<&str, (Arc<TensorFile>, HashMap<String, usize>)> = HashMap::new();
        let mut metadata: Option<BTreeMap<String, String>> = None;
        let mut parts = Vec::new();
        for reference in refs {
            let (file, tensors) = match files.entry(&reference.file) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(new) => {
                    let file = self.file(&reference.file)?;
                    if let Some(map) = &file.metadata {
                        let merged = metadata.get_or_insert_with(BTreeMap::new);
                        for (key, value) in map {
                            merged.entry(key.clone()).or_insert_with(|| value.clone());
                        }
                    }
                    let tensors = (0..)
                        .zip(&file.tensors)
                        .map(|(place, tensor)| (tensor.name.clone(), place))
                        .collect();
                    new.insert((file, tensors))
                }
            };
            let tensor = *tensors.get(&reference.tensor).ok_or_else(|| {
                ErrorCode::UnknownTensor.error(format!(
                    "{} has no tensor named {:?}",
                    reference.file, reference.tensor
                ))
            })?;
            parts.push((file.clone(), tensor));
        }
        let mut builder = SafetensorsBuilder::new(metadata);
        let mut segments = Vec::new();
        let mut kinds = Vec::new();
        // One descriptor per file, also for thousands of its tensors; one
        // handle lets `push_range` join neighbouring tensors into one read.
        let mut handles: HashMap<&str, Arc<File>> = HashMap::new();
        for (file, tensor) in &parts {
            let tensor = &file.tensors[*tensor];
            builder.push(
                &tensor.name,
                &tensor.dtype,
                &tensor.shape,
                tensor.byte_len(),
            )?;
            // Converted .npy data is little-endian like any other here.
            kinds.push((tensor.byte_len(), coding_kind(&tensor.dtype)));
            let handle = match handles.entry(file.file_name()) {
                Entry::Occupied(open) => open.get().clone(),
                Entry::Vacant(new) => new.insert(Arc::new(open(file)?)).clone(),
            };
            if file.npy.is_some() && tensor.dtype == "C128" {
                bail!(
                    "{}: safetensors has no 128-bit complex dtype (only C64), so {} cannot go into a safetensors stream",
                    file.file_name(),
                    tensor.name
                )
            }
            match NpyConversion::of(file, &handle) {
                Some(conversion) => segments.push(Segment::Converted(Arc::new(conversion))),
                None => push_range(&mut segments, &handle, tensor.data.start, tensor.byte_len()),
            }
        }
        let header = builder.header();
        let layout = layout_after(header.len() as u64, &kinds);
        segments.insert(0, Segment::Bytes(Bytes::from(header.clone())));
        Ok(Source::new(
            "selection.safetensors".to_string(),
            "safetensors",
            parts.len() as u64,
            &header,
            segments,
        )
        .with_layout(layout))
    }
}

/// The offer for a whole file sent under `name`, made without opening it.
pub fn whole_file_offer(file: &TensorFile, name: String) -> Offer {
    file_offer(
        name,
        file.format.as_str(),
        file.tensors.len() as u64,
        &file.header,
        file.size,
    )
}

/// The source for a whole file, sent with `offer` (see [`whole_file_offer`]).
pub fn whole_file(file: &TensorFile, offer: Offer) -> Result<Source> {
    let handle = Arc::new(open(file)?);
    Ok(Source::with_offer(
        offer,
        vec![Segment::File {
            file: handle,
            offset: 0,
            len: file.size,
        }],
    )
    .with_layout(file.layout()))
}

/// The layout of tensors of `(bytes, kind)` laid end to end after a header
/// of `header_len` bytes, as a built safetensors file has them.
fn layout_after(header_len: u64, kinds: &[(u64, Kind)]) -> Layout {
    let mut layout = Layout::default();
    let mut at = header_len;
    for &(len, kind) in kinds {
        layout.push(at, len, kind);
        at += len;
    }
    layout
}

/// `err` naming `file` as it is served rather than by its path here: a
/// refusal's reason goes to the puller, who has no business with our paths.
fn by_served_name(file: &TensorFile, err: anyhow::Error) -> anyhow::Error {
    let path = file.path.to_string_lossy();
    anyhow!("{}", format!("{err:#}").replace(&*path, file.file_name()))
}

fn open(file: &TensorFile) -> Result<File> {
    File::open(&file.path).with_context(|| format!("cannot open {}", file.file_name()))
}

/// Appends a file range, extending the previous one when they touch.
fn push_range(segments: &mut Vec<Segment>, handle: &Arc<File>, start: u64, len: u64) {
    if let Some(Segment::File {
        file,
        offset,
        len: last,
    }) = segments.last_mut()
        && Arc::ptr_eq(file, handle)
        && *offset + *last == start
    {
        *last += len;
        return;
    }
    segments.push(Segment::File {
        file: handle.clone(),
        offset: start,
        len,
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::patterns::tests::finishes_within;

    /// A catalog serving one safetensors file of `n` tiny tensors, all named
    /// alike but for a number, and their names.
    fn many_tensors(dir: &std::path::Path, n: usize) -> (Catalog, Vec<String>) {
        let path = dir.join("model.safetensors");
        let names: Vec<String> = (0..n)
            .map(|i| format!("model.layers.{i:06}.mlp.weight"))
            .collect();
        let mut builder = SafetensorsBuilder::new(None);
        for name in &names {
            builder.push(name, "F32", &[1], 4).unwrap();
        }
        let mut bytes = builder.header();
        bytes.resize(bytes.len() + 4 * n, 0);
        std::fs::write(&path, bytes).unwrap();
        (Catalog::open(&[path]).unwrap(), names)
    }

    fn refs(names: impl IntoIterator<Item = String>) -> Vec<TensorRef> {
        names
            .into_iter()
            .map(|tensor| TensorRef {
                file: "model.safetensors".into(),
                tensor,
            })
            .collect()
    }

    #[test]
    fn a_request_naming_many_tensors_costs_their_number() {
        const N: usize = 100_000;
        let dir = tempfile::tempdir().unwrap();
        let (catalog, names) = many_tensors(dir.path(), N);
        let catalog = Arc::new(catalog);
        // The last tensor, named N times: a scan of the file per name, or of
        // the names per tensor, would compare N * N names (25 s here).
        let last = vec![names[N - 1].clone(); N];
        let (one, twice) = finishes_within(
            Duration::from_secs(5),
            &format!("requests naming one tensor {N} times"),
            {
                let catalog = catalog.clone();
                move || {
                    let one = catalog.source("model.safetensors", Some(&last)).unwrap();
                    let twice = catalog.merged(&refs(last)).err().unwrap();
                    (one.offer, format!("{twice:#}"))
                }
            },
        );
        assert_eq!(one.tensors, 1);
        assert!(
            twice.starts_with("two selected tensors are named"),
            "{twice}"
        );

        // Every tensor, last first, whole and merged.
        let (whole, merged) = finishes_within(
            Duration::from_secs(30),
            &format!("requests for {N} tensors"),
            move || {
                let backwards: Vec<String> = names.into_iter().rev().collect();
                let whole = catalog
                    .source("model.safetensors", Some(&backwards))
                    .unwrap();
                let merged = catalog.merged(&refs(backwards)).unwrap();
                (whole.offer, merged.offer)
            },
        );
        assert_eq!(whole.tensors, N as u64);
        assert_eq!(merged.tensors, N as u64);
    }

    #[test]
    fn a_refusal_names_a_served_file_by_its_served_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.npy");
        let npy = |shape: &str, data: &[u8]| {
            let mut dict =
                format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({shape}), }}");
            while !(10 + dict.len() + 1).is_multiple_of(64) {
                dict.push(' ');
            }
            dict.push('\n');
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
            bytes.extend_from_slice(dict.as_bytes());
            bytes.extend_from_slice(data);
            bytes
        };
        std::fs::write(&path, npy("1,", &[0; 4])).unwrap();
        let catalog = Catalog::open(std::slice::from_ref(&path)).unwrap();
        // Rewritten into a broken file: its header claims more data than it has.
        std::fs::write(&path, npy("3,", &[0; 4])).unwrap();
        let refusal = format!("{:#}", catalog.source("w.npy", None).err().unwrap());
        assert!(
            refusal.starts_with("w.npy changed on disk and cannot be served as it is now: w.npy is not a valid npy file"),
            "{refusal}"
        );
        assert!(
            !refusal.contains(&*dir.path().to_string_lossy()),
            "{refusal}"
        );
    }
}
