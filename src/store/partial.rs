//! Partial files and their records: where they are named, how a fresh one
//! reserves its space, and the sweep of those left behind.
//!
//! A file is received into `.NAME.ID.tensor-iroh-partial` in the directory of
//! its final place; `.NAME.ID.tensor-iroh-chunks` beside it records each chunk
//! whose hash was checked, one `INDEX HASH` line per chunk.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

use super::direct::DirectFile;
use super::shown;
use crate::protocol::errors::ErrorCode;
use crate::protocol::wire::{Hash, Offer, hash_hex, parse_hash};

pub(super) const PARTIAL_SUFFIX: &str = ".tensor-iroh-partial";
pub(super) const RECORD_SUFFIX: &str = ".tensor-iroh-chunks";
/// Partial files untouched for this long are removed when a listener starts.
pub const STALE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// `.NAME.ID`, the start of the names of the partial files of `target`'s file
/// with the sender's file identity `identity`.
pub(super) fn partial_base(target: &Path, identity: &str) -> String {
    let file_name = target.file_name().expect("safe names end in a file name");
    format!(".{}.{identity}", file_name.to_string_lossy())
}

/// The partial file a transfer tries at `attempt`: the first is the one a
/// rerun resumes from, the others are siblings for transfers running at once.
pub(super) fn partial_path(dir: &Path, base: &str, attempt: usize) -> PathBuf {
    if attempt == 0 {
        dir.join(format!("{base}{PARTIAL_SUFFIX}"))
    } else {
        dir.join(format!("{base}-{attempt}{PARTIAL_SUFFIX}"))
    }
}

pub(super) fn record_path_for(partial: &Path) -> PathBuf {
    let name = partial.file_name().unwrap_or_default().to_string_lossy();
    let base = name.strip_suffix(PARTIAL_SUFFIX).unwrap_or(&name);
    partial.with_file_name(format!("{base}{RECORD_SUFFIX}"))
}

/// Where a partial file and its record are, under the output directory `root`.
pub(super) struct PartialPaths<'a> {
    pub(super) root: &'a Path,
    pub(super) partial: &'a Path,
    pub(super) record: &'a Path,
}

/// A partial file and its record, opened for one transfer.
pub(super) struct Partial {
    pub(super) file: DirectFile,
    pub(super) path: PathBuf,
    record: File,
    record_path: PathBuf,
    /// The chunks kept from an interrupted transfer.
    pub(super) held: Vec<(u32, Hash)>,
}

impl Partial {
    /// Prepares a locked partial file that keeps the chunks `held`: lists them
    /// in a fresh record, or with none held starts the file afresh with its
    /// space reserved.
    pub(super) fn open(
        offer: &Offer,
        file: File,
        paths: PartialPaths,
        held: Vec<(u32, Hash)>,
        reserving: &Mutex<()>,
    ) -> Result<Partial> {
        let shown_record = || shown(paths.root, paths.record);
        let mut record = OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.record)
            .with_context(|| format!("cannot create {}", shown_record()))?;
        record
            .set_len(0)
            .with_context(|| format!("cannot reset {}", shown_record()))?;
        if held.is_empty() {
            start_afresh(&file, &paths, offer.size, reserving)?;
        }
        for (index, hash) in &held {
            record_line(&mut record, *index, hash)
                .with_context(|| format!("cannot write to {}", shown_record()))?;
        }
        Ok(Partial {
            file: DirectFile::new(file),
            path: paths.partial.to_path_buf(),
            record,
            record_path: paths.record.to_path_buf(),
            held,
        })
    }

    /// The chunks this partial file holds from an interrupted transfer.
    pub(super) fn chunks(&self) -> HashSet<u32> {
        self.held.iter().map(|(index, _)| *index).collect()
    }

    /// Lists a chunk whose hash was checked in the record.
    pub(super) fn record_checked(&mut self, index: u32, hash: &Hash) -> std::io::Result<()> {
        record_line(&mut self.record, index, hash)
    }

    /// Removes the record, which a whole file no longer needs.
    pub(super) fn remove_record(&self) {
        std::fs::remove_file(&self.record_path).ok();
    }

    /// Removes the record before the partial: once the partial's name is free a
    /// new transfer may claim it and create a record of its own.
    pub(super) fn remove(&self) {
        self.remove_record();
        std::fs::remove_file(&self.path).ok();
    }
}

fn record_line(record: &mut File, index: u32, hash: &Hash) -> std::io::Result<()> {
    writeln!(record, "{index} {}", hash_hex(hash))
}

/// The chunks the record at `record_path` lists, by index, of a file of
/// `chunks` chunks.
pub(super) fn read_record(record_path: &Path, chunks: u64) -> Result<HashMap<u32, Hash>> {
    let record = BufReader::new(File::open(record_path)?);
    let mut listed = HashMap::new();
    for line in record.lines() {
        let line = line?;
        let Some((index, hash)) = line.split_once(' ') else {
            continue;
        };
        if let (Ok(index), Ok(hash)) = (index.parse::<u32>(), parse_hash(hash))
            && u64::from(index) < chunks
        {
            listed.insert(index, hash);
        }
    }
    Ok(listed)
}

/// Empties the partial file and reserves `size` bytes for it; without the
/// space, removes it and its record.
fn start_afresh(file: &File, paths: &PartialPaths, size: u64, reserving: &Mutex<()>) -> Result<()> {
    file.set_len(0)
        .with_context(|| format!("cannot reset {}", shown(paths.root, paths.partial)))?;
    let reserved = {
        let _only_one = reserving.lock().expect("store lock");
        reserve(file, paths, size)
    };
    if let Err(err) = reserved {
        std::fs::remove_file(paths.partial).ok();
        std::fs::remove_file(paths.record).ok();
        return Err(err);
    }
    Ok(())
}

/// Refuses a file that cannot fit, then reserves its blocks so a full disk shows
/// up now rather than halfway through.
fn reserve(file: &File, paths: &PartialPaths, size: u64) -> Result<()> {
    let dir = paths.partial.parent().unwrap_or(paths.root);
    let shown_dir = shown(paths.root, dir);
    if let Some(free) = free_space(dir)
        && free < size
    {
        bail!(ErrorCode::NoSpace.error(format!(
            "not enough space: the file needs {} and {shown_dir} has {} free",
            indicatif::HumanBytes(size),
            indicatif::HumanBytes(free)
        )));
    }
    if size > 0 {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for writing for the whole call.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) };
        match rc {
            0 => {}
            libc::ENOSPC => bail!(ErrorCode::NoSpace.error(format!(
                "not enough space in {shown_dir} for {}",
                indicatif::HumanBytes(size)
            ))),
            _ => file
                .set_len(size)
                .with_context(|| format!("cannot write to {shown_dir}"))?,
        }
    }
    Ok(())
}

fn free_space(dir: &Path) -> Option<u64> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `stat` is a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    (rc == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Removes partial files and records under `dir` (and its subdirectories) that
/// nobody touched for [`STALE_AFTER`]; returns how many.
pub(super) fn remove_stale(dir: &Path) -> usize {
    let mut removed = 0;
    for dir in with_subdirectories(dir) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if is_stale_partial(&entry) && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// `dir` and the directories in it: safe names are at most one level deep.
fn with_subdirectories(dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        dirs.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    dirs
}

fn is_stale_partial(entry: &std::fs::DirEntry) -> bool {
    let name = entry.file_name();
    let name = name.to_string_lossy();
    let ours = name.ends_with(PARTIAL_SUFFIX) || name.ends_with(RECORD_SUFFIX);
    let stale = entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > STALE_AFTER);
    ours && stale
}
