//! Chunk hashes that add up to the file's BLAKE3 hash.
//!
//! A chunk is a complete BLAKE3 subtree (8 MiB is a power-of-two number of BLAKE3
//! chunks), so its chaining value both checks the chunk and, merged with the others
//! along BLAKE3's tree, gives exactly `b3sum` of the file, with no second pass.
//! A file of a single chunk is its own root: its chunk hash is the file hash.

use anyhow::{Result, ensure};
use blake3::Hasher;
use blake3::hazmat::{
    HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

use super::wire::{CHUNK_SIZE, Hash};

/// Hashes one chunk of a file of `chunks` chunks, fed in pieces.
pub struct ChunkHasher {
    hasher: Hasher,
    is_root: bool,
}

impl ChunkHasher {
    pub fn new(index: u64, chunks: u64) -> Self {
        let mut hasher = Hasher::new();
        if index > 0 {
            hasher.set_input_offset(index * CHUNK_SIZE);
        }
        ChunkHasher {
            hasher,
            is_root: chunks == 1,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
    }

    pub fn finalize(&self) -> Hash {
        if self.is_root {
            *self.hasher.finalize().as_bytes()
        } else {
            self.hasher.finalize_non_root()
        }
    }
}

/// The BLAKE3 hash of a file of `size` bytes from its chunk hashes, in order.
pub fn file_hash(size: u64, chunk_hashes: &[Hash]) -> Hash {
    match chunk_hashes {
        [] => *blake3::hash(b"").as_bytes(),
        [only] => *only,
        _ => {
            let (left, right) = split(0, size, chunk_hashes);
            merge_subtrees_root(&left, &right, Mode::Hash).into()
        }
    }
}

/// One file's chunk hashes, in order, and the BLAKE3 hash they merge into:
/// what a pull from several sources checks every source's chunks against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashList {
    pub chunks: Vec<Hash>,
    pub file: Hash,
}

impl HashList {
    /// The list of a file of `size` bytes with these chunk hashes.
    pub fn new(size: u64, chunks: Vec<Hash>) -> HashList {
        let file = file_hash(size, &chunks);
        HashList { chunks, file }
    }

    /// The list a peer sent for a file of `size` bytes, if it holds one hash
    /// per chunk and they merge into the file hash it `claimed`.
    pub fn verified(size: u64, chunks: Vec<Hash>, claimed: Hash) -> Result<HashList> {
        let expected = size.div_ceil(CHUNK_SIZE);
        ensure!(
            chunks.len() as u64 == expected,
            "{} chunk hashes for a file of {expected} chunks",
            chunks.len()
        );
        let list = HashList::new(size, chunks);
        ensure!(
            list.file == claimed,
            "the chunk hashes do not add up to the file hash"
        );
        Ok(list)
    }
}

/// The two children of the subtree covering `len` bytes from `start`.
fn split(start: u64, len: u64, chunk_hashes: &[Hash]) -> (Hash, Hash) {
    let left_len = left_subtree_len(len);
    (
        subtree(start, left_len, chunk_hashes),
        subtree(start + left_len, len - left_len, chunk_hashes),
    )
}

fn subtree(start: u64, len: u64, chunk_hashes: &[Hash]) -> Hash {
    if len <= CHUNK_SIZE {
        return chunk_hashes[(start / CHUNK_SIZE) as usize];
    }
    let (left, right) = split(start, len, chunk_hashes);
    merge_subtrees_non_root(&left, &right, Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_in_chunks(data: &[u8]) -> Hash {
        let chunks = (data.len() as u64).div_ceil(CHUNK_SIZE);
        let hashes: Vec<Hash> = data
            .chunks(CHUNK_SIZE as usize)
            .enumerate()
            .map(|(index, chunk)| {
                let mut hasher = ChunkHasher::new(index as u64, chunks);
                for piece in chunk.chunks(100_000) {
                    hasher.update(piece);
                }
                hasher.finalize()
            })
            .collect();
        file_hash(data.len() as u64, &hashes)
    }

    #[test]
    fn a_hash_list_holds_only_if_it_adds_up_to_the_claimed_hash() {
        let data: Vec<u8> = (0..2 * CHUNK_SIZE as usize + 5).map(|i| i as u8).collect();
        let chunks: Vec<Hash> = data
            .chunks(CHUNK_SIZE as usize)
            .enumerate()
            .map(|(index, chunk)| {
                let mut hasher = ChunkHasher::new(index as u64, 3);
                hasher.update(chunk);
                hasher.finalize()
            })
            .collect();
        let size = data.len() as u64;
        let b3sum = *blake3::hash(&data).as_bytes();
        assert!(HashList::verified(size, chunks.clone(), b3sum).is_ok());
        let mut swapped = chunks.clone();
        swapped.swap(0, 1);
        assert!(HashList::verified(size, swapped, b3sum).is_err());
        assert!(HashList::verified(size, chunks[..2].to_vec(), b3sum).is_err());
    }

    #[test]
    fn chunk_hashes_add_up_to_b3sum() {
        let chunk = CHUNK_SIZE as usize;
        let data: Vec<u8> = (0..5 * chunk + 3)
            .map(|i| (i * 7 + i / 4093) as u8)
            .collect();
        for len in [
            0,
            1,
            1024,
            chunk - 1,
            chunk,
            chunk + 1,
            2 * chunk,
            3 * chunk + 5,
            4 * chunk,
            5 * chunk + 3,
        ] {
            assert_eq!(
                hash_in_chunks(&data[..len]),
                *blake3::hash(&data[..len]).as_bytes(),
                "length {len}"
            );
        }
    }
}
