//! Durable file writes: write to `tmp/`, fsync the file, rename it into
//! place, fsync the directory. After `commit` returns, the file is at its
//! final name with its full content, whatever crash follows: the content
//! is on disk before the name points at it (the file fsync comes before the
//! rename), and the name itself is on disk (the directory fsync).
//!
//! In tests every sync and rename is also written to a per-thread journal,
//! so that tests can check the calls are there and in order.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::SpoolError;

/// Writes `bytes` to `tmp` (created, never reused), fsyncs it, renames it
/// to `dst` and fsyncs `dst`'s directory.
pub(crate) fn commit(tmp: &Path, dst: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let written = write_synced(tmp, bytes).and_then(|()| rename_synced(tmp, dst));
    if written.is_err() {
        // Best effort: open() clears tmp/ anyway.
        let _ = fs::remove_file(tmp);
    }
    written
}

fn write_synced(tmp: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(SpoolError::io("create", tmp))?;
    f.write_all(bytes).map_err(SpoolError::io("write", tmp))?;
    sync_file(&f, tmp)
}

/// Renames `from` to `to` and fsyncs `to`'s directory.
pub(crate) fn rename_synced(from: &Path, to: &Path) -> Result<(), SpoolError> {
    fs::rename(from, to).map_err(SpoolError::io("rename", from))?;
    journal::note("rename", to);
    match to.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// fsync of a file's data and metadata.
pub(crate) fn sync_file(f: &File, path: &Path) -> Result<(), SpoolError> {
    f.sync_all().map_err(SpoolError::io("fsync", path))?;
    journal::note("fsync", path);
    Ok(())
}

/// fsync of a directory: makes the names created, renamed or removed in it
/// durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(SpoolError::io("fsync directory", dir))?;
    journal::note("fsync dir", dir);
    Ok(())
}

#[cfg(test)]
pub(crate) mod journal {
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};

    thread_local! {
        static OPS: RefCell<Vec<(&'static str, PathBuf)>> = const { RefCell::new(Vec::new()) };
    }

    pub(crate) fn note(op: &'static str, path: &Path) {
        OPS.with(|o| o.borrow_mut().push((op, path.to_path_buf())));
    }

    /// The operations this thread did since the last call.
    pub(crate) fn take() -> Vec<(&'static str, PathBuf)> {
        OPS.with(|o| std::mem::take(&mut *o.borrow_mut()))
    }
}

#[cfg(not(test))]
mod journal {
    use std::path::Path;

    #[inline]
    pub(crate) fn note(_op: &'static str, _path: &Path) {}
}
