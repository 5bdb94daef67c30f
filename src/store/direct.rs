//! Positioned writes that skip the page cache where the data allows it.
//!
//! Copying a large file into the page cache costs about as much CPU as
//! receiving it over QUIC, and the fsync before commit then writes it all out
//! again. `O_DIRECT` hands page-aligned buffers straight to the disk instead;
//! the unaligned tail of a file, and file systems that refuse `O_DIRECT`
//! (tmpfs, some network file systems), go through the page cache as before.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// What `O_DIRECT` asks of a buffer's address, a write's offset and its length:
/// 4096 covers every logical block size in common use.
pub const ALIGN: usize = 4096;

pub struct DirectFile {
    file: File,
    /// Whether `O_DIRECT` may be tried at all; cleared when the file system refuses it.
    usable: bool,
    /// Whether the descriptor has `O_DIRECT` set now.
    on: bool,
}

impl DirectFile {
    pub fn new(file: File) -> Self {
        DirectFile {
            file,
            usable: true,
            on: false,
        }
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Writes all of `data` at `offset`, bypassing the page cache when `data`
    /// and `offset` are aligned and the file system lets us.
    pub fn write_all_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        let aligned = offset.is_multiple_of(ALIGN as u64)
            && data.len().is_multiple_of(ALIGN)
            && (data.as_ptr() as usize).is_multiple_of(ALIGN);
        self.set_direct(aligned && self.usable);
        match self.file.write_all_at(data, offset) {
            Err(err) if self.on && err.raw_os_error() == Some(libc::EINVAL) => {
                // The device wants a coarser alignment than ours: stay buffered.
                self.usable = false;
                self.set_direct(false);
                self.file.write_all_at(data, offset)
            }
            done => done,
        }
    }

    fn set_direct(&mut self, on: bool) {
        if on == self.on {
            return;
        }
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl on a descriptor this struct owns; F_GETFL/F_SETFL touch
        // only its status flags.
        let set = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            let flags = if on {
                flags | libc::O_DIRECT
            } else {
                flags & !libc::O_DIRECT
            };
            flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags) == 0
        };
        if set {
            self.on = on;
        } else if on {
            self.usable = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use super::*;

    /// A copy of `data` inside `backing`, starting on a page boundary or one
    /// byte past it.
    fn placed<'a>(backing: &'a mut Vec<u8>, data: &[u8], page_aligned: bool) -> &'a [u8] {
        *backing = vec![0u8; data.len() + ALIGN + 1];
        let start = backing.as_ptr().align_offset(ALIGN) + usize::from(!page_aligned);
        backing[start..start + data.len()].copy_from_slice(data);
        &backing[start..start + data.len()]
    }

    #[test]
    fn aligned_and_unaligned_writes_leave_exactly_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let mut direct = DirectFile::new(file);
        let mut expected = vec![0u8; 5 * ALIGN + 123];
        let mut backing = Vec::new();
        // (offset, length, whether the buffer is page-aligned): direct writes,
        // buffered ones over and between them, and an unaligned tail.
        for (round, &(offset, len, page_aligned)) in [
            (0, 2 * ALIGN, true),
            (2 * ALIGN, ALIGN, false),
            (100, 50, true),
            (ALIGN, 3 * ALIGN, true),
            (4 * ALIGN, ALIGN + 123, true),
            (3 * ALIGN, ALIGN, true),
        ]
        .iter()
        .enumerate()
        {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + round * 7) as u8).collect();
            let buf = placed(&mut backing, &data, page_aligned);
            direct.write_all_at(buf, offset as u64).unwrap();
            expected[offset..offset + len].copy_from_slice(&data);
        }
        direct.file().sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }
}
