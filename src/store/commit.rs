//! Where a received file goes, and the commit that puts it there: a file under
//! its final name is always whole.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::shown;
use crate::formats::Format;
use crate::protocol::transfer::Committed;

/// The final place of a received file.
pub(super) struct Target {
    /// The directory it goes in (the store or a subdirectory of it).
    pub(super) dir: PathBuf,
    /// Its safe name, relative to the store.
    pub(super) name: PathBuf,
    /// Its path under the store.
    pub(super) path: PathBuf,
    /// `dir` as messages name it (see [`shown`]).
    pub(super) shown_dir: String,
    /// Whether it replaces a file stored under its name (`--force`).
    force: bool,
}

impl Target {
    pub(super) fn new(store: &Path, dir: PathBuf, name: PathBuf, force: bool) -> Target {
        Target {
            path: store.join(&name),
            shown_dir: shown(store, &dir),
            dir,
            name,
            force,
        }
    }

    /// Links `partial` under the target's name or the first free `stem.N.ext`
    /// beside it (renames over the target with force) and removes it, also when
    /// that fails; returns the name relative to the store. The partial must be
    /// synced: once linked, it is the stored file.
    pub(super) fn commit(&self, partial: &Path) -> Result<Committed> {
        let file_name = self
            .name
            .file_name()
            .expect("safe names end in a file name")
            .to_string_lossy()
            .into_owned();
        let relative_dir = self.name.parent().unwrap_or(Path::new(""));
        let (chosen, replaced) = if self.force {
            let replaced = self.rename_over(partial, &file_name)?;
            (file_name, replaced)
        } else {
            (self.link_under_free_name(partial, &file_name)?, false)
        };
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", self.shown_dir))?;
        Ok(Committed {
            name: relative_dir.join(chosen).to_string_lossy().into_owned(),
            replaced,
        })
    }

    /// Renames `partial` to `file_name`; returns whether a file stood there.
    fn rename_over(&self, partial: &Path, file_name: &str) -> Result<bool> {
        let replaced = std::fs::symlink_metadata(self.dir.join(file_name)).is_ok();
        if let Err(err) = std::fs::rename(partial, self.dir.join(file_name)) {
            std::fs::remove_file(partial).ok();
            return Err(err)
                .with_context(|| format!("cannot move the file into {}", self.shown_dir));
        }
        Ok(replaced)
    }

    /// Links `partial` under `file_name` or the first free `stem.N.ext`, then
    /// removes it; returns the name it got.
    fn link_under_free_name(&self, partial: &Path, file_name: &str) -> Result<String> {
        let format = Format::from_name(file_name).expect("safe names have a format");
        let stem = &file_name[..file_name.len() - format.extension().len() - 1];
        let mut n = 0u32;
        loop {
            let candidate = if n == 0 {
                file_name.to_owned()
            } else {
                format!("{stem}.{n}.{}", format.extension())
            };
            match std::fs::hard_link(partial, self.dir.join(&candidate)) {
                Ok(()) => {
                    std::fs::remove_file(partial).ok();
                    return Ok(candidate);
                }
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && n < 100_000 => {
                    n += 1;
                }
                Err(err) => {
                    std::fs::remove_file(partial).ok();
                    return Err(err)
                        .with_context(|| format!("cannot link the file into {}", self.shown_dir));
                }
            }
        }
    }
}
