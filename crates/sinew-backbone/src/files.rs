//! Small file helpers every sinew crate uses: atomic writes and checksums.

use std::fs;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::error::{BackboneError, Result};

/// Writes `bytes` to `path` atomically (see [`write_atomic_with`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Writes `path` atomically: `fill` writes a temp file beside it, which is fsynced and renamed
/// over `path`, so a crash leaves either the old file or the new one, never a torn one.
pub fn write_atomic_with<F>(path: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    // Unique per call: threads of one process may write the same file at once.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp-{}-{call}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = BufWriter::new(fs::File::create(&tmp)?);
        fill(&mut file)?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        BackboneError::io(path, e)
    })
}

/// Removes the temporary files [`write_atomic_with`] left in `dir` and its subfolders when
/// another process writing there was killed before it could rename them (a `SIGKILL` leaves them
/// behind); returns how many. Call it only on a folder this process alone writes to.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let own = format!("{}-", std::process::id());
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            removed += remove_stale_temporaries(&path);
        } else if is_temporary(&name)
            && !name
                .rsplit_once(".tmp-")
                .is_some_and(|(_, t)| t.starts_with(&own))
            && fs::remove_file(&path).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Whether `name` is one of [`write_atomic_with`]'s temporary names: `.{file}.tmp-{pid}-{call}`.
fn is_temporary(name: &str) -> bool {
    let Some((file, tail)) = name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp-")) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    !file.is_empty()
        && tail
            .split_once('-')
            .is_some_and(|(pid, call)| digits(pid) && digits(call))
}

/// Hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).map_err(|e| BackboneError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| BackboneError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporaries_of_other_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let ours = format!(".a.tmp-{}-0", std::process::id());
        let names = [
            ".checkpoint.zip.tmp-1-3",
            "sub/.adapter.safetensors.tmp-99999999-0",
            ours.as_str(),
            "kept.tmp-1-0",
            ".hidden",
            "results.json",
        ];
        for name in names {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(remove_stale_temporaries(dir.path()), 2);
        for (name, kept) in names.iter().zip([false, false, true, true, true, true]) {
            assert_eq!(dir.path().join(name).exists(), kept, "{name}");
        }
    }

    #[test]
    fn sha256_of_known_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        write_atomic(&path, b"abc").unwrap();
        // FIPS 180-2 test vector.
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// Threads of one process writing the same file at once: every write succeeds, the file is
    /// one of them whole, and no temporary file is left.
    #[test]
    fn concurrent_writes_of_one_file_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.json");
        let contents: Vec<Vec<u8>> = (0..8u8).map(|t| vec![b'a' + t; 1 << 16]).collect();
        std::thread::scope(|s| {
            for c in &contents {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..20 {
                        write_atomic(path, c).unwrap();
                    }
                });
            }
        });
        assert!(contents.contains(&fs::read(&path).unwrap()), "a torn file");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp files left"
        );
    }

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("crash"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left behind"
        );
    }
}
