//! Everything under `--out`: safe names, partial files and their resume records,
//! durable atomic commits, and the clean-up of stale partials.
//!
//! A file is received into `.NAME.ID.tensor-iroh-partial` beside its final place,
//! with `.NAME.ID.tensor-iroh-chunks` listing the chunks whose hash was checked
//! (ID is the sender's file identity: size and header hash). A rerun with the
//! same name and identity re-checks those chunks and sends only the rest. On
//! commit the partial is fsynced and linked under the first free name (or renamed
//! over the old file with `--force`), so a file under its final name is always whole.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

use crate::formats::Format;
use crate::protocol::hashing::ChunkHasher;
use crate::protocol::transfer::Sink;
use crate::protocol::wire::{CHUNK_SIZE, Hash, Offer, hash_hex, parse_hash};

const PARTIAL_SUFFIX: &str = ".tensor-iroh-partial";
const RECORD_SUFFIX: &str = ".tensor-iroh-chunks";
/// Partial files untouched for this long are removed when a listener starts.
pub const STALE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_COMPONENT_BYTES: usize = 200;
/// How long a rerun waits for the transfer it takes over to let go of the file.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// Reduces a name from the network to a relative path of one or two plain
/// components (`file` or `dir/file`), or says why it cannot be used.
pub fn safe_name(name: &str) -> Result<PathBuf> {
    ensure!(
        !name.chars().any(|c| c.is_control()),
        "name {name:?} holds control characters"
    );
    let parts: Vec<&str> = name
        .split(['/', '\\'])
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

/// The output directory of a listener or a puller.
pub struct Store {
    dir: PathBuf,
    force: bool,
    active: Mutex<HashMap<PathBuf, Active>>,
}

struct Active {
    cancel: CancellationToken,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Store {
    pub fn open(dir: &Path, force: bool) -> Result<Arc<Store>> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output directory {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot open output directory {}", dir.display()))?;
        Ok(Arc::new(Store {
            dir,
            force,
            active: Mutex::new(HashMap::new()),
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
    pub async fn accept(self: &Arc<Self>, offer: &Offer) -> Result<Box<dyn Sink>> {
        let target = safe_name(&offer.name)?;
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
            _ => self.dir.clone(),
        };
        let file_name = target.file_name().expect("safe names end in a file name");
        let base = format!(".{}.{}", file_name.to_string_lossy(), offer.identity);
        let partial_path = dir.join(format!("{base}{PARTIAL_SUFFIX}"));
        let record_path = dir.join(format!("{base}{RECORD_SUFFIX}"));

        let (cancel, guard) = self.claim(&partial_path).await?;
        let store = self.clone();
        let claimed = tokio::task::spawn_blocking({
            let offer = offer.clone();
            move || open_partial(&offer, &partial_path, &record_path)
        })
        .await
        .context("opening the partial file failed")??;
        Ok(Box::new(DiskSink {
            store,
            dir,
            target,
            partial: claimed,
            cancel,
            _guard: guard,
        }))
    }

    async fn claim(&self, partial: &Path) -> Result<(CancellationToken, OwnedMutexGuard<()>)> {
        let lock = {
            let mut active = self.active.lock().expect("store lock");
            let entry = active
                .entry(partial.to_path_buf())
                .or_insert_with(|| Active {
                    cancel: CancellationToken::new(),
                    lock: Arc::new(tokio::sync::Mutex::new(())),
                });
            entry.cancel.cancel();
            entry.cancel = CancellationToken::new();
            entry.lock.clone()
        };
        let guard = tokio::time::timeout(TAKEOVER_WAIT, lock.lock_owned())
            .await
            .context("an earlier transfer of this file did not let go of it")?;
        let cancel = {
            let active = self.active.lock().expect("store lock");
            active
                .get(partial)
                .map(|a| a.cancel.clone())
                .unwrap_or_default()
        };
        Ok((cancel, guard))
    }

    /// Links `partial` under `target` or the first free `stem.N.ext` beside it
    /// (renames over `target` with force); returns the name relative to the store.
    fn commit(&self, dir: &Path, target: &Path, partial: &Path) -> Result<PathBuf> {
        let file_name = target
            .file_name()
            .expect("safe names end in a file name")
            .to_string_lossy()
            .into_owned();
        let format = Format::from_name(&file_name).expect("safe names have a format");
        let ext = match format {
            Format::Index => ".safetensors.index.json",
            Format::Safetensors => ".safetensors",
            Format::Npy => ".npy",
        };
        let stem = &file_name[..file_name.len() - ext.len()];
        let relative_dir = target.parent().unwrap_or(Path::new(""));
        let chosen = if self.force {
            std::fs::rename(partial, dir.join(&file_name))
                .with_context(|| format!("cannot move the file into {}", dir.display()))?;
            file_name
        } else {
            let mut n = 0u32;
            loop {
                let candidate = if n == 0 {
                    file_name.clone()
                } else {
                    format!("{stem}.{n}{ext}")
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
        Ok(relative_dir.join(chosen))
    }
}

/// A partial file and its record, opened for one transfer.
struct Partial {
    file: File,
    path: PathBuf,
    record: File,
    record_path: PathBuf,
    held: Vec<(u32, Hash)>,
}

fn open_partial(offer: &Offer, path: &Path, record_path: &Path) -> Result<Partial> {
    let existing = std::fs::metadata(path).map(|m| m.len()).ok();
    let held = match existing {
        Some(len) if len == offer.size => recheck(path, record_path, offer).unwrap_or_default(),
        _ => Vec::new(),
    };
    if held.is_empty() {
        std::fs::remove_file(path).ok();
        std::fs::remove_file(record_path).ok();
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    if existing != Some(offer.size) {
        reserve(&file, path, offer.size).inspect_err(|_| {
            std::fs::remove_file(path).ok();
        })?;
    }
    let record = OpenOptions::new()
        .create(true)
        .append(true)
        .open(record_path)
        .with_context(|| format!("cannot create {}", record_path.display()))?;
    Ok(Partial {
        file,
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

/// The chunks listed in the record whose data on disk still has the listed hash.
fn recheck(path: &Path, record_path: &Path, offer: &Offer) -> Result<Vec<(u32, Hash)>> {
    let record = BufReader::new(File::open(record_path)?);
    let file = File::open(path)?;
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
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    let mut indexes: Vec<_> = listed.keys().copied().collect();
    indexes.sort_unstable();
    for index in indexes {
        let start = u64::from(index) * CHUNK_SIZE;
        let len = CHUNK_SIZE.min(offer.size - start) as usize;
        file.read_exact_at(&mut buf[..len], start)?;
        let mut hasher = ChunkHasher::new(index.into(), chunks);
        hasher.update(&buf[..len]);
        if hasher.finalize() == listed[&index] {
            held.push((index, listed[&index]));
        }
    }
    Ok(held)
}

struct DiskSink {
    store: Arc<Store>,
    dir: PathBuf,
    target: PathBuf,
    partial: Partial,
    cancel: CancellationToken,
    _guard: OwnedMutexGuard<()>,
}

impl DiskSink {
    fn remove_partial(&self) {
        std::fs::remove_file(&self.partial.path).ok();
        std::fs::remove_file(&self.partial.record_path).ok();
    }
}

impl Sink for DiskSink {
    fn held(&mut self) -> Vec<(u32, Hash)> {
        self.partial.held.clone()
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.partial
            .file
            .write_all_at(data, offset)
            .with_context(|| format!("cannot write to {}", self.dir.display()))
    }

    fn chunk_checked(&mut self, index: u32, hash: &Hash) -> Result<()> {
        writeln!(self.partial.record, "{index} {}", hash_hex(hash))
            .with_context(|| format!("cannot write to {}", self.dir.display()))
    }

    fn commit(self: Box<Self>, _hash: &Hash) -> Result<String> {
        let result = self
            .partial
            .file
            .sync_all()
            .with_context(|| format!("cannot flush the file to {}", self.dir.display()))
            .and_then(|()| {
                self.store
                    .commit(&self.dir, &self.target, &self.partial.path)
            });
        self.remove_partial();
        Ok(result?.to_string_lossy().into_owned())
    }

    fn abandon(self: Box<Self>, keep: bool) {
        if !keep {
            self.remove_partial();
        }
    }

    fn cancelled(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape() {
        assert_eq!(safe_name("a.npy").unwrap(), PathBuf::from("a.npy"));
        assert_eq!(
            safe_name("ckpt/model-1.safetensors").unwrap(),
            PathBuf::from("ckpt/model-1.safetensors")
        );
        assert_eq!(safe_name("/etc/x.npy").unwrap(), PathBuf::from("etc/x.npy"));
        for bad in [
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
