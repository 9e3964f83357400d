//! The embedded checkpoint store: one small JSON file per key under the data directory,
//! replaced atomically (write to a temp file, fsync, rename, fsync the directory) so a crash at
//! any instant leaves either the old or the new checkpoint, never a torn one.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Durable key/value store scoped to one pipeline component. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: Option<PathBuf>,
}

impl CheckpointStore {
    /// A store under `data_dir/<pipeline>/<component>`.
    pub fn new(data_dir: &Path, pipeline: &str, component: &str) -> Self {
        Self { dir: Some(data_dir.join(sanitize(pipeline)).join(sanitize(component))) }
    }

    /// A store that remembers nothing (offline tests, benchmarks).
    pub fn disabled() -> Self {
        Self { dir: None }
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{}.json", sanitize(key))))
    }

    /// The value last stored under `key`, if any.
    pub fn load(&self, key: &str) -> io::Result<Option<Value>> {
        let Some(path) = self.path(key) else { return Ok(None) };
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replace the value under `key` atomically and durably.
    pub fn store(&self, key: &str, value: &Value) -> io::Result<()> {
        let (Some(dir), Some(path)) = (self.dir.as_ref(), self.path(key)) else { return Ok(()) };
        fs::create_dir_all(dir)?;
        let tmp = path.with_extension("json.tmp");
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(value).map_err(io::Error::other)?)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        fs::File::open(dir)?.sync_all()
    }
}

/// Keep file names portable: anything but `[A-Za-z0-9._-]` becomes `_`.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_then_load_round_trips_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path(), "p/1", "file");
        assert_eq!(store.load("pos").unwrap(), None);
        store.store("pos", &serde_json::json!({"offset": 42})).unwrap();
        let reopened = CheckpointStore::new(dir.path(), "p/1", "file");
        assert_eq!(reopened.load("pos").unwrap(), Some(serde_json::json!({"offset": 42})));
        assert!(!dir.path().join("p_1/file/pos.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_checkpoint_is_an_error_not_a_silent_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path(), "p", "c");
        store.store("k", &serde_json::json!(1)).unwrap();
        fs::write(dir.path().join("p/c/k.json"), b"{not json").unwrap();
        assert!(store.load("k").is_err());
    }
}
