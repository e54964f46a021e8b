//! No function on the core path longer than a screen (issue #11: "no function over ~80 lines in
//! the core path"): the training loop, the model and its decoder layer, the method's library
//! (set-up, FLOPs, sensitivity) and the command drivers. A function's length runs from the line
//! of its `fn` to its closing brace; test code is left out.
//!
//! Outside this scope on purpose: the `#[cube]` kernels (`kernels-cubecl`, which read best as
//! one body each), the cuBLASLt bindings (`sparse-ops`), and `xtask bench gemm --check` (a CUDA
//! diagnostic).

use std::path::{Path, PathBuf};

/// The longest a function on the core path may be, in lines.
const MAX_LINES: usize = 80;

/// Source folders of the core path.
const CORE: &[&str] = &[
    "crates/llama-burn/src",
    "crates/sparselora/src",
    "crates/trainer/src",
    "xtask/src",
];

/// Files inside [`CORE`] that are not on the core path.
const EXEMPT: &[&str] = &["xtask/src/bench/gemm_check.rs"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `line` without its comment, string and character literals, which may hold braces.
fn code_of(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => break,
            '"' => {
                while let Some(s) = chars.next() {
                    match s {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            // A character literal (`'{'`, `'\n'`); a lifetime (`'a`) has no closing quote.
            '\'' => {
                let rest: Vec<char> = chars.clone().take(3).collect();
                let len = match rest.as_slice() {
                    ['\\', _, '\'', ..] => 3,
                    [_, '\'', ..] => 2,
                    _ => 0,
                };
                for _ in 0..len {
                    chars.next();
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Whether `line` starts a function item (`fn`, `pub fn`, `pub(crate) fn`, `const fn`, ...).
fn starts_fn(line: &str) -> Option<String> {
    let mut words = line.split_whitespace().peekable();
    while let Some(&word) = words.peek() {
        if word == "pub" || word.starts_with("pub(") || ["const", "async", "unsafe"].contains(&word)
        {
            words.next();
        } else {
            break;
        }
    }
    if words.next()? != "fn" {
        return None;
    }
    let name: String = words
        .next()?
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    Some(name)
}

/// `(name, first line, lines)` of every function with a body in `text` (test modules, which
/// close the file from `#[cfg(test)]` by this codebase's convention, left out).
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let code = text.split("\n#[cfg(test)]").next().unwrap_or(text);
    let lines: Vec<String> = code.lines().map(code_of).collect();
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let Some(name) = starts_fn(line) else {
            continue;
        };
        let mut depth = 0i64;
        let mut opened = false;
        'scan: for (end, line) in lines.iter().enumerate().skip(start) {
            for c in line.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    // A declaration without a body (a trait method).
                    ';' if !opened => break 'scan,
                    _ => {}
                }
                if opened && depth == 0 {
                    found.push((name.clone(), start + 1, end - start + 1));
                    break 'scan;
                }
            }
        }
    }
    found
}

#[test]
fn the_lengths_are_measured_as_written() {
    let text = "pub(crate) fn short(x: &'static str) -> char {\n    let c = '{';\n    \
                let s = \"}}\"; // }\n    c\n}\n\ntrait T {\n    fn declared(&self);\n}\n";
    assert_eq!(functions(text), vec![("short".to_owned(), 1, 5)]);
}

#[test]
fn no_function_on_the_core_path_is_longer_than_a_screen() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut too_long = Vec::new();
    for dir in CORE {
        let mut files = Vec::new();
        rust_files(&root.join(dir), &mut files);
        for file in files {
            let rel = file
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if EXEMPT.contains(&rel.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for (name, line, len) in functions(&text) {
                if len > MAX_LINES {
                    too_long.push(format!("{rel}:{line} `{name}`: {len} lines"));
                }
            }
        }
    }
    assert!(
        too_long.is_empty(),
        "functions over {MAX_LINES} lines on the core path (split them by phase):\n{}",
        too_long.join("\n")
    );
}
