//! Tidy checks over the source tree (rust-analyzer style): every Rust file says what it
//! is for in a `//!` line at its top, and no test is switched off or inverted.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !matches!(name, "target" | "node_modules" | ".git" | ".parley") {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn all_rust_files() -> Vec<PathBuf> {
    let root = parley_testkit::servers::workspace_root();
    let mut files = Vec::new();
    for dir in ["crates", "tests", "fuzz"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 30, "found only {} files; wrong root?", files.len());
    files
}

#[test]
fn every_rust_file_starts_with_a_doc_line() {
    let missing: Vec<_> = all_rust_files()
        .into_iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap_or_default().starts_with("//!"))
        .collect();
    assert!(missing.is_empty(), "files without a leading `//!` line: {missing:?}");
}

#[test]
fn no_test_is_ignored_or_expected_to_panic() {
    let ignore = ["#[ignore", "#[should_panic"].map(|s| s.to_owned());
    let offenders: Vec<_> = all_rust_files()
        .into_iter()
        .filter(|f| !f.ends_with("tidy.rs"))
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            ignore.iter().any(|needle| text.contains(needle.as_str()))
        })
        .collect();
    assert!(offenders.is_empty(), "tests switched off or inverted in: {offenders:?}");
}
