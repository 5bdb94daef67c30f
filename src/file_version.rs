//! Whether a file is still the one it was: a sender checks that the file it
//! read did not change under it, a listener that a file it serves or a partial
//! file it wrote is still as it left it, and that a file it opened is still the
//! one under its name.

use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A file as it was last written: which file (device and inode), its size, and
/// its modification and change times. The change time catches a writer that
/// sets the modification time back (`cp -p`, `rsync -t`) and a new file that
/// reuses a removed one's inode: nobody can set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileVersion {
    device: u64,
    inode: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileVersion {
    pub fn of_metadata(meta: &Metadata) -> FileVersion {
        FileVersion {
            device: meta.dev(),
            inode: meta.ino(),
            len: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The version of an open file; `None` where it cannot be read.
    pub fn of(file: &File) -> Option<FileVersion> {
        file.metadata().ok().as_ref().map(FileVersion::of_metadata)
    }
}

/// Whether `path` still names the open `file` (not a file that replaced it, or nothing).
pub fn still_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}
