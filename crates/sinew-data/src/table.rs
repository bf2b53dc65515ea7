//! Users' own data: CSV, TSV or JSONL (by extension), with the text (and optional pair) and
//! label columns named. A malformed row is an error naming `file:line`, or — with `skip_bad` —
//! skipped and counted.

use std::path::Path;

use crate::tasks::{DataError, Example};

/// Which columns (CSV/TSV headers, JSONL keys) hold what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// The text.
    pub text: String,
    /// The second text of a pair, if any.
    pub pair: Option<String>,
    /// The label.
    pub label: String,
}

/// What a file gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The examples.
    pub examples: Vec<Example>,
    /// Rows skipped as malformed (with `skip_bad`).
    pub skipped: usize,
}

/// Reads `path` (`.csv`, `.tsv`/`.tab`, `.jsonl`/`.ndjson`).
pub fn load(path: &Path, columns: &Columns, skip_bad: bool) -> Result<Loaded, DataError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| DataError::File {
        path: name.clone(),
        message: e.to_string(),
    })?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let rows: Vec<(usize, Result<Example, String>)> = match ext {
        "csv" | "tsv" | "tab" => delimited(
            &bytes,
            if ext == "csv" { b',' } else { b'\t' },
            &name,
            columns,
        )?,
        "jsonl" | "ndjson" => jsonl(&bytes, columns),
        _ => {
            return Err(DataError::File {
                path: name,
                message: "expected a .csv, .tsv or .jsonl file".into(),
            })
        }
    };
    let mut loaded = Loaded {
        examples: Vec::new(),
        skipped: 0,
    };
    for (line, row) in rows {
        match row {
            Ok(example) => loaded.examples.push(example),
            Err(_) if skip_bad => loaded.skipped += 1,
            Err(message) => {
                return Err(DataError::File {
                    path: format!("{name}:{line}"),
                    message,
                })
            }
        }
    }
    if loaded.skipped > 0 {
        tracing::warn!("{name}: skipped {} malformed rows", loaded.skipped);
    }
    Ok(loaded)
}

fn example(
    text: Option<&str>,
    pair: Option<Option<&str>>,
    label: Option<&str>,
    columns: &Columns,
) -> Result<Example, String> {
    let text = text
        .filter(|t| !t.trim().is_empty())
        .ok_or(format!("empty or missing `{}`", columns.text))?;
    let label = label
        .filter(|l| !l.trim().is_empty())
        .ok_or(format!("empty or missing `{}`", columns.label))?;
    let pair = match (pair, &columns.pair) {
        (Some(Some(p)), _) => Some(p.to_string()),
        (_, Some(col)) => return Err(format!("missing `{col}`")),
        _ => None,
    };
    Ok(Example {
        text: text.to_string(),
        pair,
        label: label.trim().to_string(),
    })
}

type Rows = Vec<(usize, Result<Example, String>)>;

fn delimited(
    bytes: &[u8],
    delimiter: u8,
    name: &str,
    columns: &Columns,
) -> Result<Rows, DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(bytes);
    let headers = reader
        .headers()
        .map_err(|e| DataError::File {
            path: name.to_string(),
            message: e.to_string(),
        })?
        .clone();
    let find = |col: &str| {
        headers
            .iter()
            .position(|h| h == col)
            .ok_or_else(|| DataError::File {
                path: name.to_string(),
                message: format!(
                    "no column `{col}` (columns: {})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            })
    };
    let text = find(&columns.text)?;
    let label = find(&columns.label)?;
    let pair = columns.pair.as_deref().map(find).transpose()?;
    let mut rows = Vec::new();
    for record in reader.records() {
        match record {
            Ok(r) => {
                let line = r.position().map_or(0, |p| p.line() as usize);
                let row = if r.len() != headers.len() {
                    Err(format!(
                        "{} fields, the header has {}",
                        r.len(),
                        headers.len()
                    ))
                } else {
                    example(r.get(text), pair.map(|p| r.get(p)), r.get(label), columns)
                };
                rows.push((line, row));
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                rows.push((line, Err(e.to_string())));
            }
        }
    }
    Ok(rows)
}

fn jsonl(bytes: &[u8], columns: &Columns) -> Rows {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let row = serde_json::from_str::<serde_json::Value>(line)
                .map_err(|e| format!("not JSON: {e}"))
                .and_then(|v| {
                    let field = |key: &str| -> Option<String> {
                        match v.get(key)? {
                            serde_json::Value::String(s) => Some(s.clone()),
                            serde_json::Value::Null => None,
                            other => Some(other.to_string()),
                        }
                    };
                    let (t, l) = (field(&columns.text), field(&columns.label));
                    let p = columns.pair.as_deref().map(field);
                    example(
                        t.as_deref(),
                        p.as_ref().map(|p| p.as_deref()),
                        l.as_deref(),
                        columns,
                    )
                });
            (i + 1, row)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Columns {
        Columns {
            text: "review".into(),
            pair: None,
            label: "stars".into(),
        }
    }

    fn file(name: &str, body: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        (dir, path)
    }

    #[test]
    fn csv_tsv_and_jsonl() {
        let (_d, csv) = file("a.csv", "id,review,stars\n1,\"good, really\",5\n2,bad,1\n");
        let got = load(&csv, &columns(), false).unwrap();
        assert_eq!(got.examples.len(), 2);
        assert_eq!(
            (
                got.examples[0].text.as_str(),
                got.examples[0].label.as_str()
            ),
            ("good, really", "5")
        );
        let (_d, tsv) = file("a.tsv", "review\tstars\nfine\t3\n");
        assert_eq!(
            load(&tsv, &columns(), false).unwrap().examples[0].label,
            "3"
        );
        let (_d, jsonl) = file(
            "a.jsonl",
            "{\"review\": \"ok\", \"stars\": 4}\n\n{\"review\": \"no\", \"stars\": \"1\"}\n",
        );
        let got = load(&jsonl, &columns(), false).unwrap();
        assert_eq!(
            got.examples
                .iter()
                .map(|e| e.label.as_str())
                .collect::<Vec<_>>(),
            ["4", "1"]
        );
    }

    #[test]
    fn malformed_rows_name_file_and_line_or_are_counted() {
        let (_d, csv) = file("b.csv", "review,stars\ngood,5\nmissing\n,2\nfine,4\n");
        let err = load(&csv, &columns(), false).unwrap_err().to_string();
        assert!(
            err.ends_with("b.csv:3: 1 fields, the header has 2"),
            "{err}"
        );
        let got = load(&csv, &columns(), true).unwrap();
        assert_eq!((got.examples.len(), got.skipped), (2, 2));
        let (_d, jsonl) = file("c.jsonl", "{\"review\": \"ok\", \"stars\": 4}\n{oops\n");
        let err = load(&jsonl, &columns(), false).unwrap_err().to_string();
        assert!(err.contains("c.jsonl:2: not JSON"), "{err}");
        let err = load(
            &csv,
            &Columns {
                label: "rating".into(),
                ..columns()
            },
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.ends_with("b.csv: no column `rating` (columns: review, stars)"),
            "{err}"
        );
    }
}
