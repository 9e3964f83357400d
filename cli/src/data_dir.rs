//! One process per data directory.
//!
//! Two processes on one `--data-dir` would read the same checkpoints and deliver everything
//! twice. `feedline run` takes an exclusive advisory lock on `<data-dir>/feedline.lock` for its
//! whole life (the kernel drops it when the process dies, even on SIGKILL, so a crash never
//! leaves a stale lock) and writes its pid there so the second process can name the holder.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Held for as long as the process uses the directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Why the directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds the lock.
    #[error(
        "data directory {dir} is in use by another feedline process (pid {holder}); \
         give each process its own --data-dir"
    )]
    Held {
        /// The directory.
        dir: PathBuf,
        /// The pid written by the holder (`unknown` if it wrote none).
        holder: String,
    },
    /// The lock file cannot be created, read or written.
    #[error("cannot lock data directory {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Create `dir` if needed and lock it for this process.
pub fn lock(dir: &Path) -> Result<DataDirLock, LockError> {
    let io = |source| LockError::Io { dir: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("feedline.lock"))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let holder = match pid.trim() {
                "" => "unknown".to_owned(),
                p => p.to_owned(),
            };
            return Err(LockError::Held { dir: dir.to_path_buf(), holder });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    file.flush().map_err(io)?;
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_the_lock_is_free_again_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open in this process
        // conflicts exactly like another process would.
        let err = lock(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(first);
        lock(dir.path()).unwrap();
    }
}
