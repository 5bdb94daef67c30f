//! Everything under `--out`: safe names, partial files and their resume records,
//! durable atomic commits, and the clean-up of stale partials.
//!
//! A file is received into `.NAME.ID.tensor-iroh-partial` beside its final place,
//! with `.NAME.ID.tensor-iroh-chunks` listing the chunks whose hash was checked
//! (ID is the sender's file identity: size and header hash). A rerun with the
//! same name and identity re-checks those chunks (reading them back, unless this
//! process checked them itself moments before) and sends only the rest. On
//! commit the partial is fsynced and linked under the first free name (or renamed
//! over the old file with `--force`), so a file under its final name is always whole.

mod direct;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use tokio_util::sync::CancellationToken;

use direct::DirectFile;

use crate::file_version::FileVersion;
use crate::formats::Format;
use crate::protocol::hashing::{ChunkHasher, file_hash};
use crate::protocol::transfer::{Committed, Sink};
use crate::protocol::wire::{CHUNK_SIZE, Hash, Offer, hash_hex, parse_hash};

const PARTIAL_SUFFIX: &str = ".tensor-iroh-partial";
const RECORD_SUFFIX: &str = ".tensor-iroh-chunks";
/// Partial files untouched for this long are removed when a listener starts.
pub const STALE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_COMPONENT_BYTES: usize = 200;
/// Concurrent transfers of one file (same name and identity) into one directory.
const MAX_SIBLINGS: usize = 64;
/// How long a rerun waits for the transfer it takes over to let go of the file.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// Reduces a name from the network to a relative path of one or two plain
/// components (`file` or `dir/file`), or says why it cannot be used.
pub fn safe_name(name: &str) -> Result<PathBuf> {
    ensure!(
        !name.chars().any(crate::escape::is_unprintable),
        "name {name:?} holds control characters"
    );
    ensure!(!name.starts_with('/'), "name {name:?} is an absolute path");
    ensure!(
        !name.contains('\\'),
        "name {name:?} holds a backslash; directories are separated by /"
    );
    let parts: Vec<&str> = name
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    ensure!(!parts.is_empty(), "name {name:?} is empty");
    ensure!(
        parts.len() <= 2,
        "name {name:?} has more than one directory level"
    );
    for part in &parts {
        ensure!(*part != "..", "name {name:?} climbs out of the directory");
        ensure!(
            !part.starts_with('.'),
            "name {name:?} would be a hidden file"
        );
        ensure!(
            part.len() <= MAX_COMPONENT_BYTES,
            "name {name:?} is too long"
        );
    }
    ensure!(
        Format::from_name(parts[parts.len() - 1]).is_some(),
        "name {name:?} is not a .npy, .safetensors or .safetensors.index.json file"
    );
    Ok(parts.iter().collect())
}

/// Answers whether the peer feeding a transfer is still there.
pub type AliveProbe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// The output directory of a listener or a puller.
pub struct Store {
    dir: PathBuf,
    force: bool,
    /// Transfers of this process, by partial file, so a rerun can take over from
    /// one whose sender is gone.
    active: Mutex<HashMap<PathBuf, Active>>,
    /// Numbers claims, so a transfer releases only its own entry in `active`:
    /// after a commit the same path may already belong to a newer transfer.
    claims: AtomicU64,
    /// Held while checking free space and reserving it: two files that fit
    /// only one at a time would otherwise both pass the check, and both fail
    /// to reserve (each taking part of the space the other needs).
    reserving: Mutex<()>,
    /// Chunks this process checked into partial files whose transfer stopped,
    /// by partial file: a rerun takes them as held without reading a gigabyte
    /// back from disk (written with `O_DIRECT`, it is not in the page cache).
    checked: Mutex<HashMap<PathBuf, CheckedChunks>>,
}

/// The chunks a stopped transfer checked, and which file they are in.
struct CheckedChunks {
    file: FileVersion,
    chunks: Vec<(u32, Hash)>,
}

struct Active {
    claim: u64,
    cancel: CancellationToken,
    alive: AliveProbe,
}

impl Store {
    pub fn open(dir: &Path, force: bool) -> Result<Arc<Store>> {
        if dir.exists() && !dir.is_dir() {
            bail!("output directory {} is not a directory", dir.display());
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output directory {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot open output directory {}", dir.display()))?;
        // A directory we cannot write to would fail every file; say so before a
        // ticket goes out.
        let probe = dir.join(format!(".tensor-iroh-probe-{}", std::process::id()));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .with_context(|| format!("cannot write to output directory {}", dir.display()))?;
        std::fs::remove_file(&probe).ok();
        Ok(Arc::new(Store {
            dir,
            force,
            active: Mutex::new(HashMap::new()),
            claims: AtomicU64::new(0),
            reserving: Mutex::new(()),
            checked: Mutex::new(HashMap::new()),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes partial files and records that nobody touched for [`STALE_AFTER`].
    pub fn remove_stale_partials(&self) -> usize {
        let mut removed = 0;
        let mut dirs = vec![self.dir.clone()];
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let ours = name.ends_with(PARTIAL_SUFFIX) || name.ends_with(RECORD_SUFFIX);
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age > STALE_AFTER);
                if ours && stale && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Prepares to receive `offer`: claims its partial file (taking it over from an
    /// earlier transfer of the same file), checks the space, and re-checks chunks
    /// kept from an interrupted run.
    pub async fn accept(
        self: &Arc<Self>,
        offer: &Offer,
        alive: AliveProbe,
    ) -> Result<Box<dyn Sink>> {
        let target = safe_name(&offer.name)?;
        let named = Format::from_name(&offer.name).map(Format::as_str);
        ensure!(
            named == Some(offer.format.as_str()),
            "name {:?} does not fit its {} content",
            offer.name,
            offer.format
        );
        ensure!(
            offer.identity.len() <= 64 && offer.identity.chars().all(|c| c.is_ascii_hexdigit()),
            "malformed file identity"
        );
        let dir = match target.parent() {
            Some(sub) if !sub.as_os_str().is_empty() => {
                let dir = self.dir.join(sub);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create directory {}", dir.display()))?;
                let meta = std::fs::symlink_metadata(&dir)?;
                ensure!(
                    meta.is_dir() && !meta.file_type().is_symlink(),
                    "{} is not a plain directory",
                    dir.display()
                );
                dir
            }
            _ => {
                // Removed while the listener runs, it comes back as `mkdir -p` would.
                std::fs::create_dir_all(&self.dir).with_context(|| {
                    format!("cannot create output directory {}", self.dir.display())
                })?;
                self.dir.clone()
            }
        };
        let file_name = target.file_name().expect("safe names end in a file name");
        let base = format!(".{}.{}", file_name.to_string_lossy(), offer.identity);
        let (file, partial_path, claim, cancel) = self.claim(&dir, &base, alive).await?;
        let record_path = record_path_for(&partial_path);
        let checked = self
            .checked
            .lock()
            .expect("store lock")
            .remove(&partial_path);
        let opened = tokio::task::spawn_blocking({
            let (offer, partial_path) = (offer.clone(), partial_path.clone());
            let store = self.clone();
            move || {
                open_partial(
                    &offer,
                    file,
                    &partial_path,
                    &record_path,
                    checked,
                    &store.reserving,
                )
            }
        })
        .await
        .context("opening the partial file failed")
        .and_then(|opened| opened);
        let partial = match opened {
            Ok(partial) => partial,
            Err(err) => {
                self.release(&partial_path, claim);
                return Err(err);
            }
        };
        let target_path = self.dir.join(&target);
        let stored_before = target_path.exists();
        // A file of one chunk is streamed at once, whatever we hold: it is
        // compared at commit instead.
        let existing = if stored_before && !offer.eager {
            tokio::task::spawn_blocking({
                let (name, offer) = (target.clone(), offer.clone());
                move || Existing::open(&target_path, &name, &offer)
            })
            .await
            .ok()
            .flatten()
        } else {
            None
        };
        let written = FileVersion::of(partial.file.file());
        Ok(Box::new(DiskSink {
            store: self.clone(),
            dir,
            target,
            written,
            partial,
            offer: offer.clone(),
            existing,
            stored_before,
            received: HashMap::new(),
            claim,
            cancel,
        }))
    }

    /// Locks a partial file for this transfer: the one a rerun resumes from, taken
    /// over when the transfer holding it in this process has lost its peer, or
    /// else a fresh sibling, so two live transfers never share one file.
    async fn claim(
        &self,
        dir: &Path,
        base: &str,
        alive: AliveProbe,
    ) -> Result<(File, PathBuf, u64, CancellationToken)> {
        let mut attempt = 0;
        let mut vanished = 0;
        while attempt < MAX_SIBLINGS {
            let path = if attempt == 0 {
                dir.join(format!("{base}{PARTIAL_SUFFIX}"))
            } else {
                dir.join(format!("{base}-{attempt}{PARTIAL_SUFFIX}"))
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let locked = match file.try_lock() {
                Ok(()) => true,
                Err(std::fs::TryLockError::WouldBlock) => self.take_over(&path, &file).await,
                Err(std::fs::TryLockError::Error(err)) => {
                    return Err(err).with_context(|| format!("cannot lock {}", path.display()));
                }
            };
            // The holder may have committed (and unlinked) the file between our
            // open and our lock: a lock on a file no longer at `path` is worth
            // nothing, so open the path afresh.
            if locked && !still_at(&file, &path) {
                vanished += 1;
                ensure!(
                    vanished <= MAX_SIBLINGS,
                    "{} keeps being replaced while it is opened",
                    path.display()
                );
                continue;
            }
            if locked {
                let claim = self.claims.fetch_add(1, Ordering::Relaxed);
                let cancel = CancellationToken::new();
                self.active.lock().expect("store lock").insert(
                    path.clone(),
                    Active {
                        claim,
                        cancel: cancel.clone(),
                        alive: alive.clone(),
                    },
                );
                return Ok((file, path, claim, cancel));
            }
            attempt += 1;
        }
        bail!("{MAX_SIBLINGS} transfers of this file are already under way")
    }

    /// Cancels the transfer of this process that holds `path` if its peer is
    /// gone, and waits for it to let go; false when the holder is alive or is
    /// another process. A transfer that takes the file first (another rerun of
    /// the same file) is checked in turn: reruns killed one after the other
    /// must not leave the last one waiting for a dead holder.
    async fn take_over(&self, path: &Path, file: &File) -> bool {
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        let mut cancelled = None;
        while tokio::time::Instant::now() < deadline {
            if file.try_lock().is_ok() {
                return true;
            }
            let holder = {
                let active = self.active.lock().expect("store lock");
                active
                    .get(path)
                    .map(|a| (a.claim, a.cancel.clone(), a.alive.clone()))
            };
            match holder {
                None if cancelled.is_none() => return false,
                Some((claim, cancel, alive)) if cancelled != Some(claim) => {
                    if alive().await {
                        return false;
                    }
                    cancel.cancel();
                    cancelled = Some(claim);
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    fn release(&self, partial: &Path, claim: u64) {
        let mut active = self.active.lock().expect("store lock");
        if active.get(partial).is_some_and(|a| a.claim == claim) {
            active.remove(partial);
        }
    }

    /// Links `partial` under `target` or the first free `stem.N.ext` beside it
    /// (renames over `target` with force) and removes it, also when that fails;
    /// returns the name relative to the store.
    fn commit(&self, dir: &Path, target: &Path, partial: &Path) -> Result<Committed> {
        let file_name = target
            .file_name()
            .expect("safe names end in a file name")
            .to_string_lossy()
            .into_owned();
        let format = Format::from_name(&file_name).expect("safe names have a format");
        let stem = &file_name[..file_name.len() - format.extension().len() - 1];
        let relative_dir = target.parent().unwrap_or(Path::new(""));
        let mut replaced = false;
        let chosen = if self.force {
            replaced = std::fs::symlink_metadata(dir.join(&file_name)).is_ok();
            if let Err(err) = std::fs::rename(partial, dir.join(&file_name)) {
                std::fs::remove_file(partial).ok();
                return Err(err)
                    .with_context(|| format!("cannot move the file into {}", dir.display()));
            }
            file_name
        } else {
            let mut n = 0u32;
            loop {
                let candidate = if n == 0 {
                    file_name.clone()
                } else {
                    format!("{stem}.{n}.{}", format.extension())
                };
                match std::fs::hard_link(partial, dir.join(&candidate)) {
                    Ok(()) => {
                        std::fs::remove_file(partial).ok();
                        break candidate;
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && n < 100_000 => {
                        n += 1;
                    }
                    Err(err) => {
                        std::fs::remove_file(partial).ok();
                        return Err(err).with_context(|| {
                            format!("cannot link the file into {}", dir.display())
                        });
                    }
                }
            }
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync directory {}", dir.display()))?;
        Ok(Committed {
            name: relative_dir.join(chosen).to_string_lossy().into_owned(),
            replaced,
        })
    }
}

/// Whether `path` still names the open `file` (not a file that replaced it, or nothing).
fn still_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// A partial file and its record, opened for one transfer.
struct Partial {
    file: DirectFile,
    path: PathBuf,
    record: File,
    record_path: PathBuf,
    held: Vec<(u32, Hash)>,
}

impl Partial {
    /// The chunks this partial file holds from an interrupted transfer.
    fn chunks(&self) -> HashSet<u32> {
        self.held.iter().map(|(index, _)| *index).collect()
    }
}

fn record_path_for(partial: &Path) -> PathBuf {
    let name = partial.file_name().unwrap_or_default().to_string_lossy();
    let base = name.strip_suffix(PARTIAL_SUFFIX).unwrap_or(&name);
    partial.with_file_name(format!("{base}{RECORD_SUFFIX}"))
}

/// Prepares a locked partial file: keeps the chunks this process checked into
/// it, or else those whose data still matches the record, or starts afresh
/// with the file's space reserved.
fn open_partial(
    offer: &Offer,
    file: File,
    path: &Path,
    record_path: &Path,
    checked: Option<CheckedChunks>,
    reserving: &Mutex<()>,
) -> Result<Partial> {
    let existing = file.metadata().map(|m| m.len()).unwrap_or(0);
    let held = match checked {
        _ if existing != offer.size => Vec::new(),
        Some(checked) if Some(checked.file) == FileVersion::of(&file) => checked.chunks,
        _ => recheck(&file, record_path, offer, hash_budget(offer)).unwrap_or_default(),
    };
    let mut record = OpenOptions::new()
        .create(true)
        .append(true)
        .open(record_path)
        .with_context(|| format!("cannot create {}", record_path.display()))?;
    record.set_len(0)?;
    if held.is_empty() {
        file.set_len(0)
            .with_context(|| format!("cannot reset {}", path.display()))?;
        let reserved = {
            let _only_one = reserving.lock().expect("store lock");
            reserve(&file, path, offer.size)
        };
        if let Err(err) = reserved {
            std::fs::remove_file(path).ok();
            std::fs::remove_file(record_path).ok();
            return Err(err);
        }
    }
    for (index, hash) in &held {
        writeln!(record, "{index} {}", hash_hex(hash))?;
    }
    Ok(Partial {
        file: DirectFile::new(file),
        path: path.to_path_buf(),
        record,
        record_path: record_path.to_path_buf(),
        held,
    })
}

/// Refuses a file that cannot fit, then reserves its blocks so a full disk shows
/// up now rather than halfway through.
fn reserve(file: &File, path: &Path, size: u64) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Some(free) = free_space(dir)
        && free < size
    {
        bail!(
            "not enough space: the file needs {} and {} has {} free",
            indicatif::HumanBytes(size),
            dir.display(),
            indicatif::HumanBytes(free)
        );
    }
    if size > 0 {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for writing for the whole call.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) };
        match rc {
            0 => {}
            libc::ENOSPC => bail!(
                "not enough space in {} for {}",
                dir.display(),
                indicatif::HumanBytes(size)
            ),
            _ => file.set_len(size)?,
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

/// The chunks listed in the record whose data on disk still has the listed
/// hash, as many as can be hashed within `budget`.
fn recheck(
    file: &File,
    record_path: &Path,
    offer: &Offer,
    budget: Duration,
) -> Result<Vec<(u32, Hash)>> {
    let record = BufReader::new(File::open(record_path)?);
    let chunks = offer.chunks();
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
fn hash_chunk_at(
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

/// The share of the sender's patience a listener may spend hashing what it
/// holds (a partial file, a file stored under the offered name) before it
/// answers an offer: the sender waits for that answer with its stall timeout
/// running. What is not hashed in time is sent again.
const HASH_BUDGET_SHARE: u32 = 2;
/// And never longer than this.
const HASH_BUDGET_MAX: Duration = Duration::from_secs(30);

fn hash_budget(offer: &Offer) -> Duration {
    match offer.patience_secs {
        // A sender that does not say its patience.
        0 => HASH_BUDGET_MAX,
        secs => (Duration::from_secs(secs) / HASH_BUDGET_SHARE).min(HASH_BUDGET_MAX),
    }
}

/// A file already stored under the offered name with the offered size: a rerun
/// after an interrupted send, most likely. Its chunks are offered as held, so an
/// identical file crosses the network as nothing and is not stored twice.
struct Existing {
    file: File,
    /// Its name under the output directory, as reported to the sender.
    name: String,
    modified: Option<SystemTime>,
    chunk_hashes: Vec<Hash>,
}

impl Existing {
    /// `path` with its chunk hashes, when it is a plain file of the offer's
    /// size whose first chunk is the offer's.
    fn open(path: &Path, name: &Path, offer: &Offer) -> Option<Existing> {
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

    fn unchanged(&self) -> bool {
        self.file.metadata().ok().and_then(|m| m.modified().ok()) == self.modified
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

struct DiskSink {
    store: Arc<Store>,
    dir: PathBuf,
    target: PathBuf,
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
    claim: u64,
    cancel: CancellationToken,
}

impl Drop for DiskSink {
    fn drop(&mut self) {
        self.store.release(&self.partial.path, self.claim);
    }
}

impl DiskSink {
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
                .with_context(|| format!("cannot write to {}", self.dir.display()))?;
        }
        Ok(())
    }

    /// Removes the record before the partial: once the partial's name is free a
    /// new transfer may claim it and create a record of its own.
    fn remove_partial(&self) {
        std::fs::remove_file(&self.partial.record_path).ok();
        std::fs::remove_file(&self.partial.path).ok();
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
            .with_context(|| format!("cannot write to {}", self.dir.display()))?;
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
        writeln!(self.partial.record, "{index} {}", hash_hex(hash))
            .with_context(|| format!("cannot write to {}", self.dir.display()))
    }

    fn commit(mut self: Box<Self>, hash: &Hash) -> Result<Committed> {
        let existing = match self.existing.take() {
            Some(existing) => Some(existing),
            // Another transfer may have stored the same file while this one
            // ran, or it is a one-chunk file that was not compared up front.
            None if !self.stored_before || self.offer.eager => Existing::open(
                &self.store.dir.join(&self.target),
                &self.target,
                &self.offer,
            ),
            None => None,
        };
        if let Some(existing) = existing {
            // Identical, untouched, and still the file under the name.
            if file_hash(self.offer.size, &existing.chunk_hashes) == *hash
                && existing.unchanged()
                && still_at(&existing.file, &self.store.dir.join(&self.target))
            {
                // Already stored under its name: no second copy.
                self.remove_partial();
                return Ok(Committed::new(existing.name));
            }
            if let Err(err) = self.fill_from(&existing) {
                self.remove_partial();
                return Err(err);
            }
        }
        if let Err(err) = self.partial.file.file().sync_all() {
            self.remove_partial();
            return Err(err)
                .with_context(|| format!("cannot flush the file to {}", self.dir.display()));
        }
        std::fs::remove_file(&self.partial.record_path).ok();
        // From here the partial's name may be claimed by a new transfer as soon
        // as it is linked away, so only the store's commit touches it.
        self.store
            .commit(&self.dir, &self.target, &self.partial.path)
    }

    fn abandon(self: Box<Self>, keep: bool) {
        // A partial without one checked chunk would only hold its disk space
        // until the stale-partial sweep.
        let holds_nothing = self.received.is_empty() && self.partial.held.is_empty();
        if !keep || holds_nothing {
            self.remove_partial();
            return;
        }
        // Recorded before the partial's lock goes with `self`, so the rerun
        // waiting for that lock finds it.
        if let Some(file) = FileVersion::of(self.partial.file.file())
            && Some(file) == self.written
        {
            // A held chunk sent again (the sender's differed) has its new hash.
            let mut chunks: HashMap<u32, Hash> = self.partial.held.iter().copied().collect();
            chunks.extend(&self.received);
            let mut chunks: Vec<(u32, Hash)> = chunks.into_iter().collect();
            chunks.sort_unstable_by_key(|(index, _)| *index);
            self.store
                .checked
                .lock()
                .expect("store lock")
                .insert(self.partial.path.clone(), CheckedChunks { file, chunks });
        }
    }

    fn cancelled(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offer of a safetensors file of `size` bytes.
    fn test_offer(size: u64) -> Offer {
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

    fn only_file_ending(dir: &Path, suffix: &str) -> PathBuf {
        let found: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.to_string_lossy().ends_with(suffix))
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        found[0].clone()
    }

    #[tokio::test]
    async fn a_rerun_in_the_same_run_takes_the_chunks_checked_before_without_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let gone: AliveProbe = Arc::new(|| Box::pin(async { false }));
        let offer = test_offer(3 * CHUNK_SIZE);
        let chunk = vec![7u8; CHUNK_SIZE as usize];
        let mut hasher = ChunkHasher::new(1, 3);
        hasher.update(&chunk);
        let hash = hasher.finalize();

        let mut first = store.accept(&offer, gone.clone()).await.unwrap();
        first.write(CHUNK_SIZE, &chunk).unwrap();
        first.chunk_checked(1, &hash).unwrap();
        first.abandon(true);
        // Without its record, a partial's chunks would have to be sent again;
        // this process checked them itself, and knows.
        std::fs::remove_file(only_file_ending(dir.path(), RECORD_SUFFIX)).unwrap();
        let mut rerun = store.accept(&offer, gone.clone()).await.unwrap();
        assert_eq!(rerun.held(), vec![(1, hash)]);
        rerun.abandon(true);

        // Another file in the partial's place (same bytes) is not what was
        // checked: its chunks are re-checked against the record, here gone.
        let partial = only_file_ending(dir.path(), PARTIAL_SUFFIX);
        // Past the granularity of change times.
        std::thread::sleep(Duration::from_millis(20));
        let bytes = std::fs::read(&partial).unwrap();
        std::fs::remove_file(&partial).unwrap();
        std::fs::write(&partial, &bytes).unwrap();
        std::fs::remove_file(only_file_ending(dir.path(), RECORD_SUFFIX)).unwrap();
        let mut third = store.accept(&offer, gone.clone()).await.unwrap();
        assert!(third.held().is_empty(), "{:?}", third.held());
        third.write(CHUNK_SIZE, &chunk).unwrap();
        third.chunk_checked(1, &hash).unwrap();

        // Written to by someone else before the transfer stopped: its own
        // check no longer vouches for the data.
        std::thread::sleep(Duration::from_millis(20));
        {
            use std::os::unix::fs::FileExt;
            let partial = only_file_ending(dir.path(), PARTIAL_SUFFIX);
            let file = OpenOptions::new().write(true).open(partial).unwrap();
            file.write_all_at(&[8], CHUNK_SIZE + 5).unwrap();
        }
        third.abandon(true);
        std::fs::remove_file(only_file_ending(dir.path(), RECORD_SUFFIX)).unwrap();
        let mut fourth = store.accept(&offer, gone).await.unwrap();
        assert!(fourth.held().is_empty(), "{:?}", fourth.held());
        fourth.abandon(false);
    }

    #[test]
    fn names_cannot_escape() {
        assert_eq!(safe_name("a.npy").unwrap(), PathBuf::from("a.npy"));
        assert_eq!(
            safe_name("ckpt/model-1.safetensors").unwrap(),
            PathBuf::from("ckpt/model-1.safetensors")
        );
        assert_eq!(safe_name("./a//b.npy").unwrap(), PathBuf::from("a/b.npy"));
        for bad in [
            "/etc/x.npy",
            "a\\b.npy",
            "..\\x.npy",
            "../x.npy",
            "a/../../x.npy",
            "a/b/c.npy",
            ".hidden.npy",
            "x\n.npy",
            "passwd",
            "",
            "..",
        ] {
            assert!(safe_name(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
