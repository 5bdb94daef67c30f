//! What a peer is told when storing its file fails. The reason crosses the
//! wire (a listener's refusal reaches the sender, a puller's failure reaches
//! the listener), and the absolute path of our output directory is none of the
//! peer's business: files are named relative to it, as the peer named them.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use tokio_util::sync::CancellationToken;

use crate::protocol::transfer::{Committed, ReadBack, Sink};
use crate::protocol::wire::{Hash, Offer};
use crate::store::{AliveProbe, Store};

/// [`Store::accept`], with every error of the accept and of the sink it gives
/// naming files relative to the store's directory.
pub async fn accept(store: &Arc<Store>, offer: &Offer, alive: AliveProbe) -> Result<Box<dyn Sink>> {
    let dir = store.dir().to_string_lossy().into_owned();
    match store.accept(offer, alive).await {
        Ok(sink) => Ok(Box::new(RelativeErrors { sink, dir })),
        Err(err) => Err(relative(&dir, &err)),
    }
}

/// A sink whose errors name files relative to `dir`.
struct RelativeErrors {
    sink: Box<dyn Sink>,
    dir: String,
}

impl Sink for RelativeErrors {
    fn held(&mut self) -> Vec<(u32, Hash)> {
        self.sink.held()
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.sink
            .write(offset, data)
            .map_err(|err| relative(&self.dir, &err))
    }
    fn chunk_checked(&mut self, index: u32, hash: &Hash) -> Result<()> {
        self.sink
            .chunk_checked(index, hash)
            .map_err(|err| relative(&self.dir, &err))
    }
    fn commit(self: Box<Self>, hash: &Hash) -> Result<Committed> {
        let dir = self.dir;
        self.sink.commit(hash).map_err(|err| relative(&dir, &err))
    }
    fn commit_blocks(&self) -> bool {
        self.sink.commit_blocks()
    }
    fn in_order_only(&self) -> bool {
        self.sink.in_order_only()
    }
    fn abandon(self: Box<Self>, keep: bool) {
        self.sink.abandon(keep)
    }
    fn cancelled(&self) -> CancellationToken {
        self.sink.cancelled()
    }
    fn read_back(&self) -> Option<Arc<dyn ReadBack>> {
        self.sink.read_back()
    }
}

/// `err` with each path under `dir` made relative to it, and `dir` itself
/// called "the output directory".
fn relative(dir: &str, err: &anyhow::Error) -> anyhow::Error {
    anyhow!("{}", relative_paths(&format!("{err:#}"), Path::new(dir)))
}

/// What `text` says with paths under `dir` relative to it. A path counts where
/// it starts a word, as the store's messages place them.
fn relative_paths(text: &str, dir: &Path) -> String {
    let dir = dir.to_string_lossy();
    // The root directory's children are "/name", not "//name".
    let prefix = dir.trim_end_matches('/');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut at_word_start = true;
    while let Some(c) = rest.chars().next() {
        if at_word_start {
            if let Some(inside) = rest.strip_prefix(prefix).and_then(|r| r.strip_prefix('/'))
                && inside.chars().next().is_some_and(|c| !ends_path(c))
            {
                rest = inside;
                at_word_start = false;
                continue;
            }
            if let Some(after) = rest.strip_prefix(&*dir)
                && after.chars().next().is_none_or(ends_path)
            {
                out.push_str(OUTPUT_DIRECTORY);
                rest = after;
                at_word_start = false;
                continue;
            }
        }
        out.push(c);
        at_word_start = c.is_whitespace() || matches!(c, '"' | '\'' | '(');
        rest = &rest[c.len_utf8()..];
    }
    // "directory /srv/in" said of the output directory itself.
    out.replace(
        &format!("output directory {OUTPUT_DIRECTORY}"),
        OUTPUT_DIRECTORY,
    )
    .replace(&format!("directory {OUTPUT_DIRECTORY}"), OUTPUT_DIRECTORY)
}

const OUTPUT_DIRECTORY: &str = "the output directory";

/// Whether `c` ends a path in a message (`/srv/in: No space left`).
fn ends_path(c: char) -> bool {
    c.is_whitespace() || matches!(c, ':' | ',' | ';' | ')' | '"' | '\'')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_the_directory_become_relative_and_the_directory_is_named() {
        let dir = Path::new("/srv/in");
        for (said, told) in [
            (
                "/srv/in/ckpt is not a plain directory",
                "ckpt is not a plain directory",
            ),
            (
                "cannot create /srv/in/ckpt/.w.safetensors.ab.tensor-iroh-partial: Permission denied",
                "cannot create ckpt/.w.safetensors.ab.tensor-iroh-partial: Permission denied",
            ),
            (
                "not enough space: the file needs 2 GiB and /srv/in has 1 GiB free",
                "not enough space: the file needs 2 GiB and the output directory has 1 GiB free",
            ),
            (
                "w.npy: cannot write to /srv/in: No space left on device (os error 28)",
                "w.npy: cannot write to the output directory: No space left on device (os error 28)",
            ),
            (
                "cannot sync directory /srv/in: Input/output error",
                "cannot sync the output directory: Input/output error",
            ),
            (
                "cannot create output directory /srv/in",
                "cannot create the output directory",
            ),
            // Not under the directory, or not a path of ours.
            ("/srv/inbox/x is elsewhere", "/srv/inbox/x is elsewhere"),
            ("name \"a/srv/in/x.npy\"", "name \"a/srv/in/x.npy\""),
        ] {
            assert_eq!(relative_paths(said, dir), told);
        }
        assert_eq!(
            relative_paths("/ckpt is not a plain directory; / is full", Path::new("/")),
            "ckpt is not a plain directory; the output directory is full"
        );
    }
}
