//! What a rerun keeps of an interrupted transfer: the chunks whose data still
//! has the hash they were checked with, found within a share of the sender's
//! patience.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;

use super::partial::read_record;
use crate::file_version::FileVersion;
use crate::protocol::hashing::ChunkHasher;
use crate::protocol::wire::{CHUNK_SIZE, Hash, Offer};

/// The share of the sender's patience a listener may spend hashing what it
/// holds (a partial file, a file stored under the offered name) before it
/// answers an offer: the sender waits for that answer with its stall timeout
/// running. What is not hashed in time is sent again.
const HASH_BUDGET_SHARE: u32 = 2;
/// And never longer than this.
const HASH_BUDGET_MAX: Duration = Duration::from_secs(30);

/// Chunks this process checked into partial files whose transfer stopped, by
/// partial file: a rerun takes them as held without reading a gigabyte back
/// from disk (written with `O_DIRECT`, it is not in the page cache).
#[derive(Default)]
pub(super) struct Checked(Mutex<HashMap<PathBuf, CheckedChunks>>);

/// The chunks a stopped transfer checked, and which file they are in.
pub(super) struct CheckedChunks {
    pub(super) file: FileVersion,
    pub(super) chunks: Vec<(u32, Hash)>,
}

impl Checked {
    pub(super) fn take(&self, partial: &Path) -> Option<CheckedChunks> {
        self.0.lock().expect("store lock").remove(partial)
    }

    pub(super) fn keep(&self, partial: PathBuf, checked: CheckedChunks) {
        self.0.lock().expect("store lock").insert(partial, checked);
    }
}

/// The chunks a locked partial file holds for `offer`: those this process
/// checked into it, or else those whose data still matches the record.
pub(super) fn held(
    file: &File,
    record_path: &Path,
    offer: &Offer,
    checked: Option<CheckedChunks>,
) -> Vec<(u32, Hash)> {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    match checked {
        _ if len != offer.size => Vec::new(),
        Some(checked) if Some(checked.file) == FileVersion::of(file) => checked.chunks,
        _ => recheck(file, record_path, offer, hash_budget(offer)).unwrap_or_default(),
    }
}

/// The chunks listed in the record whose data on disk still has the listed
/// hash, as many as can be hashed within `budget`.
fn recheck(
    file: &File,
    record_path: &Path,
    offer: &Offer,
    budget: Duration,
) -> Result<Vec<(u32, Hash)>> {
    let listed = read_record(record_path, offer.chunks())?;
    let mut held = Vec::new();
    let mut buf = Vec::new();
    let mut indexes: Vec<_> = listed.keys().copied().collect();
    indexes.sort_unstable();
    let started = std::time::Instant::now();
    for index in indexes {
        if started.elapsed() >= budget {
            break;
        }
        if hash_chunk_at(file, offer, index, &mut buf)? == listed[&index] {
            held.push((index, listed[&index]));
        }
    }
    Ok(held)
}

/// The hash of chunk `index` of `file`, a file of the offer's size; leaves the
/// chunk's bytes in `buf`.
pub(super) fn hash_chunk_at(
    file: &File,
    offer: &Offer,
    index: u32,
    buf: &mut Vec<u8>,
) -> std::io::Result<Hash> {
    let start = u64::from(index) * CHUNK_SIZE;
    let len = CHUNK_SIZE.min(offer.size - start) as usize;
    buf.resize(len, 0);
    file.read_exact_at(buf, start)?;
    let mut hasher = ChunkHasher::new(index.into(), offer.chunks());
    hasher.update(buf);
    Ok(hasher.finalize())
}

pub(super) fn hash_budget(offer: &Offer) -> Duration {
    match offer.patience_secs {
        // A sender that does not say its patience.
        0 => HASH_BUDGET_MAX,
        secs => (Duration::from_secs(secs) / HASH_BUDGET_SHARE).min(HASH_BUDGET_MAX),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::protocol::wire::hash_hex;

    /// The offer of a safetensors file of `size` bytes.
    pub(in crate::store) fn test_offer(size: u64) -> Offer {
        Offer {
            name: "w.safetensors".into(),
            format: "safetensors".into(),
            size,
            tensors: 1,
            identity: "ab".into(),
            eager: false,
            discard: false,
            first_chunk: None,
            patience_secs: 30,
            files_in_send: 1,
            stripes: 1,
            transfer: 0,
        }
    }

    #[test]
    fn a_resume_keeps_the_chunks_that_still_match_and_hashes_within_budget() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = CHUNK_SIZE as usize;
        let mut data: Vec<u8> = (0..3 * chunk).map(|i| (i % 251) as u8).collect();
        let offer = test_offer(data.len() as u64);
        let record_path = dir.path().join("record");
        let mut record = String::new();
        let mut buf = Vec::new();
        let path = dir.path().join("partial");
        std::fs::write(&path, &data).unwrap();
        for index in 0..3 {
            let hash = hash_chunk_at(&File::open(&path).unwrap(), &offer, index, &mut buf).unwrap();
            record.push_str(&format!("{index} {}\n", hash_hex(&hash)));
        }
        std::fs::write(&record_path, record).unwrap();
        data[chunk + 5] ^= 1;
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();

        let held = recheck(&file, &record_path, &offer, Duration::from_secs(60)).unwrap();
        let indexes: Vec<u32> = held.iter().map(|(index, _)| *index).collect();
        assert_eq!(indexes, [0, 2], "the changed chunk is not held");
        let held = recheck(&file, &record_path, &offer, Duration::ZERO).unwrap();
        assert!(held.is_empty(), "no time to hash: nothing is held");
    }
}
