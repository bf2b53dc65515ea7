//! AdapterHub `ConfigUnion` folders (MAM and UniPELT, saved by the real library with random
//! weights by tools/reference/make_union_fixtures.py): sinew does not run unions yet, and says so
//! in one line naming the file and the key, listing the architectures it reads.

mod common;

use common::fixture_path;
use sinew::adapter::{AdapterError, AdapterFolder, ConfigError};

#[test]
fn union_folders_are_refused_by_name() {
    for case in ["mam", "unipelt"] {
        let dir = fixture_path("union").join(case);
        let err = AdapterFolder::read_unchecked(&dir).unwrap_err();
        match &err {
            AdapterError::Config {
                path,
                error:
                    ConfigError::Architecture {
                        architecture,
                        known,
                    },
            } => {
                assert_eq!(path, &dir.join("adapter_config.json"), "{case}");
                assert_eq!(architecture, "union", "{case}");
                assert!(
                    known.contains(&"reft") && !known.contains(&"union"),
                    "{case}"
                );
            }
            other => panic!("{case}: {other}"),
        }
        let line = err.to_string();
        assert!(
            line.contains("`architecture` = \"union\"") && !line.contains('\n'),
            "{line}"
        );
    }
}
