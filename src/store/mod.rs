//! Everything under `--out`: where a received file lives until it is whole.
//!
//! A file is received into `.NAME.ID.tensor-iroh-partial` beside its final place,
//! with `.NAME.ID.tensor-iroh-chunks` listing the chunks whose hash was checked
//! (ID is the sender's file identity: size and header hash; `partial.rs`, which
//! also reserves the file's space and sweeps stale partials). A transfer claims
//! its partial file with a lock; a rerun takes over from a transfer of this
//! process whose peer is gone, and otherwise receives into a sibling
//! (`claim.rs`). A rerun with the same name and identity re-checks the recorded
//! chunks (reading them back, unless this process checked them itself moments
//! before) and sends only the rest (`resume.rs`); a file already stored under the
//! name counts as held too, so an identical file is not stored twice
//! (`dedupe.rs`). The transfer writes through a [`Sink`] (`sink.rs`); on commit
//! the partial is fsynced and linked under the first free name (or renamed over
//! the old file with `--force`), so a file under its final name is always whole
//! (`commit.rs`). Names from the network are made safe in `names.rs`.
//!
//! The store's messages name files relative to its directory ([`shown`]): a
//! refusal or failure reaches the peer, who has no business with our paths.

mod claim;
mod commit;
mod dedupe;
mod direct;
mod names;
mod partial;
mod resume;
mod sink;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail, ensure};

pub use claim::AliveProbe;
pub use names::safe_name;
pub use partial::STALE_AFTER;

use claim::Claims;
use commit::Target;
use dedupe::Existing;
use partial::{Partial, PartialPaths, partial_base, record_path_for};
use resume::Checked;
use sink::DiskSink;

use crate::protocol::transfer::Sink;
use crate::protocol::wire::Offer;

/// The output directory of a listener or a puller.
pub struct Store {
    dir: PathBuf,
    force: bool,
    claims: Arc<Claims>,
    /// Held while checking free space and reserving it: two files that fit
    /// only one at a time would otherwise both pass the check, and both fail
    /// to reserve (each taking part of the space the other needs).
    reserving: Mutex<()>,
    checked: Arc<Checked>,
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
            claims: Arc::default(),
            reserving: Mutex::new(()),
            checked: Arc::default(),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes partial files and records that nobody touched for [`STALE_AFTER`].
    pub fn remove_stale_partials(&self) -> usize {
        partial::remove_stale(&self.dir)
    }

    /// Prepares to receive `offer`: claims its partial file (taking it over from an
    /// earlier transfer of the same file), checks the space, and re-checks chunks
    /// kept from an interrupted run.
    pub async fn accept(
        self: &Arc<Self>,
        offer: &Offer,
        alive: AliveProbe,
    ) -> Result<Box<dyn Sink>> {
        let name = names::target_of(offer)?;
        let dir = self.dir_for(&name)?;
        let base = partial_base(&name, &offer.identity);
        // An error from here on drops the claim: it must not outlive the transfer.
        let (file, claim) = self.claims.claim(&self.dir, &dir, &base, alive).await?;
        let partial = self.open_partial(offer, file, &claim.path).await?;
        let target = Target::new(&self.dir, dir, name, self.force);
        let stored_before = target.path.exists();
        // A file of one chunk is streamed at once, whatever we hold: it is
        // compared at commit instead.
        let existing = if stored_before && !offer.eager {
            Existing::look_up(target.path.clone(), target.name.clone(), offer.clone()).await
        } else {
            None
        };
        Ok(Box::new(DiskSink::new(
            claim,
            self.checked.clone(),
            target,
            partial,
            offer.clone(),
            existing,
            stored_before,
        )))
    }

    /// The directory the file `name` goes in, created if need be.
    fn dir_for(&self, name: &Path) -> Result<PathBuf> {
        match name.parent() {
            Some(sub) if !sub.as_os_str().is_empty() => {
                let dir = self.dir.join(sub);
                let shown_dir = shown(&self.dir, &dir);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create directory {shown_dir}"))?;
                let meta = std::fs::symlink_metadata(&dir)
                    .with_context(|| format!("cannot look at directory {shown_dir}"))?;
                ensure!(
                    meta.is_dir() && !meta.file_type().is_symlink(),
                    "{shown_dir} is not a plain directory"
                );
                Ok(dir)
            }
            _ => {
                // Removed while the listener runs, it comes back as `mkdir -p` would.
                std::fs::create_dir_all(&self.dir)
                    .with_context(|| format!("cannot create {OUTPUT_DIRECTORY}"))?;
                Ok(self.dir.clone())
            }
        }
    }

    /// Opens the claimed partial file at `path` with the chunks it still holds,
    /// on a blocking thread: re-checking them reads from disk.
    async fn open_partial(
        self: &Arc<Self>,
        offer: &Offer,
        file: File,
        path: &Path,
    ) -> Result<Partial> {
        let record_path = record_path_for(path);
        let checked = self.checked.take(path);
        tokio::task::spawn_blocking({
            let (offer, path) = (offer.clone(), path.to_path_buf());
            let store = self.clone();
            move || {
                let held = resume::held(&file, &record_path, &offer, checked);
                let paths = PartialPaths {
                    root: &store.dir,
                    partial: &path,
                    record: &record_path,
                };
                Partial::open(&offer, file, paths, held, &store.reserving)
            }
        })
        .await
        .context("opening the partial file failed")
        .and_then(|opened| opened)
    }
}

const OUTPUT_DIRECTORY: &str = "the output directory";

/// `path`, under the output directory `root`, as the store's messages name
/// it: relative to `root`, and `root` itself [`OUTPUT_DIRECTORY`].
fn shown(root: &Path, path: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(relative) if relative.as_os_str().is_empty() => OUTPUT_DIRECTORY.to_string(),
        Ok(relative) => relative.display().to_string(),
        // Not under the output directory: its name alone, rather than a path
        // of ours.
        Err(_) => path
            .file_name()
            .map_or_else(String::new, |name| name.to_string_lossy().into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::partial::{PARTIAL_SUFFIX, RECORD_SUFFIX};
    use super::resume::tests::test_offer;
    use super::*;
    use crate::protocol::hashing::ChunkHasher;
    use crate::protocol::wire::CHUNK_SIZE;

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
    fn messages_name_paths_relative_to_the_output_directory() {
        let root = Path::new("/srv/in");
        assert_eq!(shown(root, Path::new("/srv/in/ckpt/.w.npy")), "ckpt/.w.npy");
        assert_eq!(shown(root, root), "the output directory");
        assert_eq!(shown(Path::new("/"), Path::new("/ckpt")), "ckpt");
        assert_eq!(shown(root, Path::new("/srv/inbox/x.npy")), "x.npy");
    }

    #[tokio::test]
    async fn a_refusal_never_names_our_directory() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let ours = store.dir().to_string_lossy().into_owned();
        // A link an operator left where the send's directory would go.
        std::os::unix::fs::symlink(elsewhere.path(), store.dir().join("ckpt")).unwrap();
        let alive: AliveProbe = Arc::new(|| Box::pin(async { true }));
        let refused = |offer: Offer| {
            let (store, alive) = (store.clone(), alive.clone());
            async move {
                let Err(err) = store.accept(&offer, alive).await else {
                    panic!("{} was accepted", offer.name);
                };
                format!("{err:#}")
            }
        };

        let linked = refused(Offer {
            name: "ckpt/w.safetensors".into(),
            ..test_offer(10)
        })
        .await;
        assert_eq!(linked, "ckpt is not a plain directory");
        let too_big = refused(test_offer(1 << 50)).await;
        assert!(
            too_big.starts_with("not enough space: the file needs ")
                && too_big.contains(" and the output directory has "),
            "{too_big}"
        );
        for told in [linked, too_big] {
            assert!(!told.contains(&ours), "{told}");
        }
    }
}
