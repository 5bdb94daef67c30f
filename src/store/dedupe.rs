//! A file already stored under the offered name with the offered size: a rerun
//! after an interrupted send, most likely. Its chunks are offered as held, so an
//! identical file crosses the network as nothing and is not stored twice.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::resume::{hash_budget, hash_chunk_at};
use crate::file_version::still_at;
use crate::protocol::hashing::file_hash;
use crate::protocol::wire::{Hash, Offer, parse_hash};

pub(super) struct Existing {
    pub(super) file: File,
    /// Its name under the output directory, as reported to the sender.
    pub(super) name: String,
    modified: Option<SystemTime>,
    pub(super) chunk_hashes: Vec<Hash>,
}

impl Existing {
    /// [`Existing::open`] on a blocking thread: it reads the whole file.
    pub(super) async fn look_up(path: PathBuf, name: PathBuf, offer: Offer) -> Option<Existing> {
        tokio::task::spawn_blocking(move || Existing::open(&path, &name, &offer))
            .await
            .ok()
            .flatten()
    }

    /// `path` with its chunk hashes, when it is a plain file of the offer's
    /// size whose first chunk is the offer's.
    pub(super) fn open(path: &Path, name: &Path, offer: &Offer) -> Option<Existing> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        if !meta.is_file() || meta.len() != offer.size || offer.size == 0 {
            return None;
        }
        let file = File::open(path).ok()?;
        let mut buf = Vec::new();
        let mut chunk_hashes = vec![hash_chunk_at(&file, offer, 0, &mut buf).ok()?];
        // A changed file of the same size (new weights, same shapes) almost
        // always differs in its first chunk: rule it out before reading on.
        if let Some(first) = &offer.first_chunk
            && parse_hash(first).ok()? != chunk_hashes[0]
        {
            return None;
        }
        let budget = hash_budget(offer);
        let started = std::time::Instant::now();
        for index in 1..offer.chunks() as u32 {
            if started.elapsed() > budget {
                return None;
            }
            chunk_hashes.push(hash_chunk_at(&file, offer, index, &mut buf).ok()?);
        }
        Some(Existing {
            file,
            name: name.to_string_lossy().into_owned(),
            modified: meta.modified().ok(),
            chunk_hashes,
        })
    }

    /// Whether this is the received file (`hash`, `size` bytes), untouched, and
    /// still the file under its name at `path`: then it needs no second copy.
    pub(super) fn is_stored(&self, hash: &Hash, size: u64, path: &Path) -> bool {
        file_hash(size, &self.chunk_hashes) == *hash
            && self.unchanged()
            && still_at(&self.file, path)
    }

    fn unchanged(&self) -> bool {
        self.file.metadata().ok().and_then(|m| m.modified().ok()) == self.modified
    }
}
