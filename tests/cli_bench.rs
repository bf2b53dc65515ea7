//! `sinew bench` from the command line, on every compiled backend: one JSON object with the
//! fields README documents, sane statistics, and one-line errors for impossible works.

mod common;

use common::{error_line, model_dir, sinew};

fn bench(args: &[&str]) -> serde_json::Value {
    let model = model_dir();
    let mut all = vec!["bench", "--model", model.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = sinew(&all);
    assert!(
        out.status.success(),
        "sinew {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn every_work_on_every_backend_prints_one_json_object() {
    let backends: &[&str] = &[
        #[cfg(feature = "ndarray")]
        "ndarray",
        #[cfg(feature = "flex")]
        "flex",
        #[cfg(feature = "wgpu")]
        "wgpu",
    ];
    for backend in backends {
        for (work, extra) in [
            ("train-step", &["--adapter", "lora"][..]),
            ("inference", &[][..]),
            ("fuse-step", &["--fuse", "2"][..]),
        ] {
            let mut args = vec![
                "--work",
                work,
                "--backend",
                backend,
                "--batch",
                "2",
                "--seq",
                "8",
                "--reps",
                "2",
            ];
            args.extend_from_slice(extra);
            let r = bench(&args);
            assert_eq!(r["work"], work);
            assert_eq!(r["backend"], *backend);
            assert_eq!((r["batch"].as_u64(), r["seq"].as_u64()), (Some(2), Some(8)));
            assert_eq!(r["reps"].as_u64(), Some(2));
            let [min, median, max] =
                ["min_s", "median_s", "max_s"].map(|k| r[k].as_f64().expect(k));
            assert!(
                0.0 < min && min <= median && median <= max,
                "{backend} {work}: {r}"
            );
            assert!(r["minor_faults"].as_f64().is_some_and(|f| f >= 0.0));
        }
    }
}

#[test]
fn impossible_works_are_one_line_errors() {
    let model = model_dir();
    let m = model.to_str().unwrap();
    let line = error_line(&sinew(&[
        "bench",
        "--model",
        m,
        "--work",
        "fuse-step",
        "--fuse",
        "1",
    ]));
    assert!(line.contains("--fuse"), "{line}");
    let line = error_line(&sinew(&["bench", "--model", m, "--reps", "0"]));
    assert!(line.contains("--reps"), "{line}");
}
