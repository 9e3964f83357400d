//! Which file a checkpoint belongs to.
//!
//! A byte offset means nothing without the file it counts into: after a logrotate during a
//! deploy, or with `path` pointed elsewhere, resuming at the old offset silently skips the first
//! bytes of another file. So the checkpoint also stores the file's identity, as Vector and
//! Filebeat do: device + inode (a rename over the path brings a new inode), plus a fingerprint of
//! the first bytes the offset covers (an inode reused by a new file, or the file rewritten in
//! place, changes those bytes). The fingerprint covers `min(offset, 1024)` bytes and stores that
//! length: a file shorter than 1 KiB, or one that grew since, is checked over exactly the bytes
//! that existed and were consumed when the checkpoint was written.
//!
//! A mismatch always errs towards reading again (at-least-once): a file copied to another device
//! keeps its bytes but not its inode, and is read from the start once more.

use serde::{Deserialize, Serialize};

/// Most bytes a fingerprint covers.
pub(super) const FINGERPRINT_MAX: usize = 1024;

/// Where a file lives on its file system. Both `None` where the platform has no inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct FileId {
    pub dev: Option<u64>,
    pub inode: Option<u64>,
}

impl FileId {
    #[cfg(unix)]
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self { dev: Some(meta.dev()), inode: Some(meta.ino()) }
    }

    #[cfg(not(unix))]
    pub fn of(_meta: &std::fs::Metadata) -> Self {
        Self::default()
    }
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.dev, self.inode) {
            (Some(dev), Some(inode)) => write!(f, "dev {dev} inode {inode}"),
            _ => f.write_str("no inode"),
        }
    }
}

/// The identity stored next to the offset in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileIdentity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode: Option<u64>,
    /// Bytes from the start of the file the fingerprint covers.
    pub fingerprint_len: u64,
    /// FNV-1a (64 bit, hex) of those bytes: defined by its spec, so it stays the same across
    /// Rust releases (std's `DefaultHasher` does not promise that) and checkpoints survive an
    /// upgrade. It guards against accidents, not adversaries.
    pub fingerprint: String,
}

impl std::fmt::Display for FileIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = FileId { dev: self.dev, inode: self.inode };
        write!(f, "{id}, first {} bytes {}", self.fingerprint_len, self.fingerprint)
    }
}

/// The first bytes of the open file (at most [`FINGERPRINT_MAX`]), as far as they have been seen:
/// read once at open, then extended by the lines read while the file was shorter than that.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Prefix {
    bytes: Vec<u8>,
}

impl Prefix {
    /// Read the first bytes of `file` from its current position, which must be the start.
    pub async fn read(file: &mut tokio::fs::File) -> std::io::Result<Self> {
        use tokio::io::AsyncReadExt as _;
        let mut bytes = Vec::with_capacity(FINGERPRINT_MAX);
        (&mut *file).take(FINGERPRINT_MAX as u64).read_to_end(&mut bytes).await?;
        Ok(Self { bytes })
    }

    #[cfg(test)]
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self { bytes: bytes[..bytes.len().min(FINGERPRINT_MAX)].to_vec() }
    }

    /// `bytes` were read at offset `at`: keep the part beyond what is already known.
    pub fn extend(&mut self, at: u64, bytes: &[u8]) {
        let known = self.bytes.len() as u64;
        if known >= FINGERPRINT_MAX as u64 || at > known {
            return; // full, or not contiguous (cannot happen: reading is sequential)
        }
        let Ok(skip) = usize::try_from(known - at) else { return };
        let Some(new) = bytes.get(skip..) else { return };
        let room = FINGERPRINT_MAX - self.bytes.len();
        self.bytes.extend_from_slice(&new[..new.len().min(room)]);
    }

    /// The identity to checkpoint with `offset` in the file `id`: the fingerprint covers the first
    /// `min(offset, 1024)` bytes (fewer only if fewer were ever seen, which sequential reading
    /// rules out; the stored length keeps it verifiable either way).
    pub fn identity(&self, id: FileId, offset: u64) -> FileIdentity {
        let len = self.bytes.len().min(usize::try_from(offset).unwrap_or(usize::MAX));
        FileIdentity {
            dev: id.dev,
            inode: id.inode,
            fingerprint_len: len as u64,
            fingerprint: format!("{:016x}", fnv1a(&self.bytes[..len])),
        }
    }

    /// The fingerprint of the first `len` bytes; `None` when fewer are known.
    fn fingerprint(&self, len: u64) -> Option<String> {
        let covered = self.bytes.get(..usize::try_from(len).ok()?)?;
        Some(format!("{:016x}", fnv1a(covered)))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// How a checkpoint's identity compares with the file at its path now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Same file: the offset holds.
    Same,
    /// A checkpoint from before identities: trusted as it is.
    Unknown,
    /// Another file, or this one rewritten: the offset does not apply. Says what differs.
    Different(String),
}

/// Compare the `stored` identity with the file whose id is `id` and whose first bytes are `prefix`.
pub(super) fn compare(stored: Option<&FileIdentity>, id: FileId, prefix: &Prefix) -> Verdict {
    let Some(stored) = stored else { return Verdict::Unknown };
    let was = FileId { dev: stored.dev, inode: stored.inode };
    let both_known = was.inode.is_some() && id.inode.is_some();
    if both_known && was != id {
        return Verdict::Different(format!(
            "another file is at the path ({was} was checkpointed, {id} is there now)"
        ));
    }
    match prefix.fingerprint(stored.fingerprint_len) {
        Some(now) if now == stored.fingerprint => Verdict::Same,
        Some(now) => Verdict::Different(format!(
            "the first {} bytes changed (fingerprint {} was checkpointed, {now} is there now)",
            stored.fingerprint_len, stored.fingerprint
        )),
        None => Verdict::Different(format!(
            "the file is shorter than the {} bytes fingerprinted at the checkpoint",
            stored.fingerprint_len
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: FileId = FileId { dev: Some(1), inode: Some(7) };

    #[test]
    fn the_fingerprint_covers_the_offset_up_to_the_maximum_and_says_how_much() {
        let long = vec![b'x'; 3000];
        let p = Prefix::from_bytes(&long);
        assert_eq!(p.identity(ID, 10).fingerprint_len, 10);
        assert_eq!(p.identity(ID, 5000).fingerprint_len, FINGERPRINT_MAX as u64);
        assert_eq!(p.identity(ID, 0).fingerprint_len, 0);
        assert_ne!(p.identity(ID, 10).fingerprint, p.identity(ID, 11).fingerprint);
        let short = Prefix::from_bytes(b"{\"n\":1}\n");
        assert_eq!(short.identity(ID, 9).fingerprint_len, 8, "only bytes seen are fingerprinted");
        assert_eq!(short.fingerprint(9), None);
    }

    #[test]
    fn a_file_that_grew_since_the_checkpoint_is_the_same_file() {
        let stored = Prefix::from_bytes(b"{\"n\":1}\n").identity(ID, 8);
        let grown = Prefix::from_bytes(b"{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n");
        assert_eq!(compare(Some(&stored), ID, &grown), Verdict::Same);
    }

    #[test]
    fn another_inode_or_other_first_bytes_or_a_shorter_file_is_different() {
        let stored = Prefix::from_bytes(b"{\"n\":1}\n{\"n\":2}\n").identity(ID, 16);
        let moved = FileId { dev: Some(1), inode: Some(8) };
        let same_bytes = Prefix::from_bytes(b"{\"n\":1}\n{\"n\":2}\n");
        let v = compare(Some(&stored), moved, &same_bytes);
        assert!(
            matches!(&v, Verdict::Different(why) if why.contains("inode 7") && why.contains("inode 8")),
            "{v:?}"
        );
        let rewritten = Prefix::from_bytes(b"{\"n\":9}\n{\"n\":2}\n{\"n\":3}\n");
        assert!(
            matches!(compare(Some(&stored), ID, &rewritten), Verdict::Different(why) if why.contains("changed"))
        );
        let shorter = Prefix::from_bytes(b"{\"n\":1}\n");
        assert!(
            matches!(compare(Some(&stored), ID, &shorter), Verdict::Different(why) if why.contains("shorter"))
        );
    }

    #[test]
    fn checkpoints_without_identity_or_without_inodes_still_compare() {
        let prefix = Prefix::from_bytes(b"abc");
        assert_eq!(compare(None, ID, &prefix), Verdict::Unknown);
        let no_inode = FileId::default();
        let stored = prefix.identity(no_inode, 3);
        assert_eq!(
            compare(Some(&stored), ID, &prefix),
            Verdict::Same,
            "only the fingerprint can be compared"
        );
    }

    #[test]
    fn extending_keeps_only_new_contiguous_bytes_up_to_the_maximum() {
        let mut p = Prefix::from_bytes(b"abc");
        p.extend(1, b"bcde"); // overlaps what is known
        assert_eq!(p, Prefix::from_bytes(b"abcde"));
        p.extend(9, b"zz"); // a gap: ignored
        assert_eq!(p, Prefix::from_bytes(b"abcde"));
        p.extend(5, &vec![b'f'; 2000]);
        assert_eq!(p.bytes.len(), FINGERPRINT_MAX);
    }

    #[test]
    fn the_fingerprint_is_stable_and_round_trips_through_json() {
        // FNV-1a test vectors: a checkpoint written today must verify after any upgrade.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let id = Prefix::from_bytes(b"hello\n").identity(ID, 6);
        let json = serde_json::to_value(&id).unwrap();
        assert_eq!(serde_json::from_value::<FileIdentity>(json).unwrap(), id);
    }
}
