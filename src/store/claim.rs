//! Which transfer writes a partial file, and when a rerun takes it over.
//!
//! A transfer holds its partial file locked. A rerun of the same file that finds
//! the lock taken asks the holder's peer whether it is still there: if not, it
//! cancels the holder and waits for the lock; if so (or the holder is another
//! process), it receives into a sibling partial instead, so two live transfers
//! never share one file.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio_util::sync::CancellationToken;

use super::partial::partial_path;
use super::shown;
use crate::file_version::still_at;

/// Concurrent transfers of one file (same name and identity) into one directory.
const MAX_SIBLINGS: usize = 64;
/// How long a rerun waits for the transfer it takes over to let go of the file.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// Answers whether the peer feeding a transfer is still there.
pub type AliveProbe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// Transfers of this process, by partial file, so a rerun can take over from
/// one whose sender is gone.
#[derive(Default)]
pub(super) struct Claims {
    active: Mutex<HashMap<PathBuf, Active>>,
    /// Numbers claims, so a transfer releases only its own entry in `active`:
    /// after a commit the same path may already belong to a newer transfer.
    next: AtomicU64,
}

struct Active {
    claim: u64,
    cancel: CancellationToken,
    alive: AliveProbe,
}

/// A transfer's hold on its partial file, as other transfers of this process
/// see it; dropping it removes the transfer from [`Claims`].
pub(super) struct Claim {
    claims: Arc<Claims>,
    id: u64,
    pub(super) path: PathBuf,
    /// Cancelled when a rerun takes the partial file over.
    pub(super) cancel: CancellationToken,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims.release(&self.path, self.id);
    }
}

impl Claims {
    /// Locks a partial file in `dir`, under the output directory `root`, for
    /// this transfer: the one a rerun resumes from, taken over when the
    /// transfer holding it in this process has lost its peer, or else a fresh
    /// sibling, so two live transfers never share one file.
    pub(super) async fn claim(
        self: &Arc<Self>,
        root: &Path,
        dir: &Path,
        base: &str,
        alive: AliveProbe,
    ) -> Result<(File, Claim)> {
        let mut attempt = 0;
        let mut vanished = 0;
        while attempt < MAX_SIBLINGS {
            let path = partial_path(dir, base, attempt);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("cannot create {}", shown(root, &path)))?;
            let locked = self
                .lock(&path, &file)
                .await
                .with_context(|| format!("cannot lock {}", shown(root, &path)))?;
            // The holder may have committed (and unlinked) the file between our
            // open and our lock: a lock on a file no longer at `path` is worth
            // nothing, so open the path afresh.
            if locked && !still_at(&file, &path) {
                vanished += 1;
                ensure!(
                    vanished <= MAX_SIBLINGS,
                    "{} keeps being replaced while it is opened",
                    shown(root, &path)
                );
                continue;
            }
            if locked {
                return Ok((file, self.register(path, &alive)));
            }
            attempt += 1;
        }
        bail!("{MAX_SIBLINGS} transfers of this file are already under way")
    }

    /// Locks `file`, taking it over from a holder in this process whose peer
    /// is gone; false when it stays held.
    async fn lock(&self, path: &Path, file: &File) -> std::io::Result<bool> {
        match file.try_lock() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(self.take_over(path, file).await),
            Err(std::fs::TryLockError::Error(err)) => Err(err),
        }
    }

    fn register(self: &Arc<Self>, path: PathBuf, alive: &AliveProbe) -> Claim {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        self.active.lock().expect("store lock").insert(
            path.clone(),
            Active {
                claim: id,
                cancel: cancel.clone(),
                alive: alive.clone(),
            },
        );
        Claim {
            claims: self.clone(),
            id,
            path,
            cancel,
        }
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
}
