//! The sink a transfer writes a received file into: chunks into the partial
//! file, checked chunks into its record, and at the end the commit, or what a
//! rerun may keep.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use tokio_util::sync::CancellationToken;

use super::claim::Claim;
use super::commit::Target;
use super::dedupe::Existing;
use super::partial::Partial;
use super::resume::{Checked, CheckedChunks, hash_chunk_at};
use crate::file_version::FileVersion;
use crate::protocol::transfer::{Committed, ReadBack, Sink};
use crate::protocol::wire::{CHUNK_SIZE, Hash, Offer};

pub(super) struct DiskSink {
    claim: Claim,
    checked: Arc<Checked>,
    target: Target,
    partial: Partial,
    offer: Offer,
    existing: Option<Existing>,
    /// Whether a file was already stored under the name when the offer came:
    /// if so, it was compared then (or was too large to compare).
    stored_before: bool,
    /// Chunks written and checked in this transfer.
    received: HashMap<u32, Hash>,
    /// The partial as this transfer last left it: if it is not so when the
    /// transfer stops, someone else wrote to it, and a rerun must re-check.
    written: Option<FileVersion>,
}

impl DiskSink {
    pub(super) fn new(
        claim: Claim,
        checked: Arc<Checked>,
        target: Target,
        partial: Partial,
        offer: Offer,
        existing: Option<Existing>,
        stored_before: bool,
    ) -> DiskSink {
        DiskSink {
            claim,
            checked,
            target,
            written: FileVersion::of(partial.file.file()),
            partial,
            offer,
            existing,
            stored_before,
            received: HashMap::new(),
        }
    }

    /// The stored file to compare with at commit.
    fn existing_at_commit(&mut self) -> Option<Existing> {
        match self.existing.take() {
            Some(existing) => Some(existing),
            // Another transfer may have stored the same file while this one
            // ran, or it is a one-chunk file that was not compared up front.
            None if !self.stored_before || self.offer.eager => {
                Existing::open(&self.target.path, &self.target.name, &self.offer)
            }
            None => None,
        }
    }

    /// Copies into the partial the chunks the sender kept because `existing`
    /// held them, checking each against the hash it was offered with.
    fn fill_from(&mut self, existing: &Existing) -> Result<()> {
        let in_partial = self.partial.chunks();
        let mut buf = Vec::new();
        for (index, offered) in (0..).zip(&existing.chunk_hashes) {
            if in_partial.contains(&index) || self.received.contains_key(&index) {
                continue;
            }
            let hash = hash_chunk_at(&existing.file, &self.offer, index, &mut buf)
                .with_context(|| format!("cannot read {}", existing.name))?;
            ensure!(
                hash == *offered,
                "{} changed during the transfer; send again",
                existing.name
            );
            self.partial
                .file
                .write_all_at(&buf, u64::from(index) * CHUNK_SIZE)
                .with_context(|| format!("cannot write to {}", self.target.shown_dir))?;
        }
        Ok(())
    }

    /// Leaves the chunks held and checked here to a rerun in this process, if
    /// the partial is still as this transfer left it.
    fn keep_checked(&self) {
        let Some(file) = FileVersion::of(self.partial.file.file()) else {
            return;
        };
        if Some(file) != self.written {
            return;
        }
        // A held chunk sent again (the sender's differed) has its new hash.
        let mut chunks: HashMap<u32, Hash> = self.partial.held.iter().copied().collect();
        chunks.extend(&self.received);
        let mut chunks: Vec<(u32, Hash)> = chunks.into_iter().collect();
        chunks.sort_unstable_by_key(|(index, _)| *index);
        self.checked
            .keep(self.partial.path.clone(), CheckedChunks { file, chunks });
    }
}

/// Starts writing a checked chunk back to disk now, so the fsync before commit
/// finds little left to do instead of flushing the whole file at the end.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a hint on an open descriptor; errors only mean no early writeback.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

impl Sink for DiskSink {
    fn held(&mut self) -> Vec<(u32, Hash)> {
        let mut held = self.partial.held.clone();
        if let Some(existing) = &self.existing {
            let in_partial = self.partial.chunks();
            held.extend(
                (0..)
                    .zip(existing.chunk_hashes.iter().copied())
                    .filter(|(index, _)| !in_partial.contains(index)),
            );
            held.sort_unstable_by_key(|(index, _)| *index);
        }
        held
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.partial
            .file
            .write_all_at(data, offset)
            .with_context(|| format!("cannot write to {}", self.target.shown_dir))?;
        self.written = FileVersion::of(self.partial.file.file());
        Ok(())
    }

    fn chunk_checked(&mut self, index: u32, hash: &Hash) -> Result<()> {
        self.received.insert(index, *hash);
        start_writeback(
            self.partial.file.file(),
            u64::from(index) * CHUNK_SIZE,
            CHUNK_SIZE,
        );
        self.partial
            .record_checked(index, hash)
            .with_context(|| format!("cannot write to {}", self.target.shown_dir))
    }

    fn commit(mut self: Box<Self>, hash: &Hash) -> Result<Committed> {
        if let Some(existing) = self.existing_at_commit() {
            if existing.is_stored(hash, self.offer.size, &self.target.path) {
                // Already stored under its name: no second copy.
                self.partial.remove();
                return Ok(Committed::new(existing.name));
            }
            if let Err(err) = self.fill_from(&existing) {
                self.partial.remove();
                return Err(err);
            }
        }
        if let Err(err) = self.partial.file.file().sync_all() {
            self.partial.remove();
            return Err(err)
                .with_context(|| format!("cannot flush the file to {}", self.target.shown_dir));
        }
        self.partial.remove_record();
        // From here the partial's name may be claimed by a new transfer as soon
        // as it is linked away, so only the target's commit touches it.
        self.target.commit(&self.partial.path)
    }

    fn abandon(self: Box<Self>, keep: bool) {
        // A partial without one checked chunk would only hold its disk space
        // until the stale-partial sweep.
        let holds_nothing = self.received.is_empty() && self.partial.held.is_empty();
        if !keep || holds_nothing {
            self.partial.remove();
            return;
        }
        // Recorded before the partial's lock goes with `self`, so the rerun
        // waiting for that lock finds it.
        self.keep_checked();
    }

    fn cancelled(&self) -> CancellationToken {
        self.claim.cancel.clone()
    }

    fn read_back(&self) -> Option<Arc<dyn ReadBack>> {
        // Its own descriptor: the partial may be linked away or removed at the
        // commit while a fan-out still reads from it.
        let partial = File::open(&self.partial.path).ok()?;
        let existing = match &self.existing {
            Some(existing) => {
                let in_partial = self.partial.chunks();
                let chunks = (0..existing.chunk_hashes.len() as u32)
                    .filter(|index| !in_partial.contains(index))
                    .collect();
                Some((existing.file.try_clone().ok()?, chunks))
            }
            None => None,
        };
        Some(Arc::new(StoredChunks { partial, existing }))
    }
}

/// Reads back the chunks of a transfer into the store: from its partial file,
/// or from the identical file stored before where it held them from there.
struct StoredChunks {
    partial: File,
    existing: Option<(File, HashSet<u32>)>,
}

impl ReadBack for StoredChunks {
    fn read_at(&self, offset: u64, buf: &mut [u8], held: bool) -> std::io::Result<()> {
        let index = (offset / CHUNK_SIZE) as u32;
        let file = match &self.existing {
            Some((existing, chunks)) if held && chunks.contains(&index) => existing,
            _ => &self.partial,
        };
        file.read_exact_at(buf, offset)
    }
}
