//! The layout's contract (docs/ARCHITECTURE.md, "Layers"): the modules of
//! `src/` form layers, and code only reaches down. This test reads the
//! source, finds every reference from one module to another (`use
//! crate::...`, `crate::...::` paths, `super::` between sibling files) and
//! fails on
//! - a reference from a module to one in a higher layer (an upward import:
//!   move the shared type below both, or the code above both);
//! - a cycle between sibling files of one module (e.g. `a.rs` using `b.rs`
//!   and `b.rs` using `a.rs`: what both need belongs in a third file).
//!
//! `#[cfg(test)]` items are left out: a test may use whatever it tests
//! with (a sharded operator's tests run a real aggregate), as the tests
//! under `tests/` do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules of `src/`, highest layer first. Each may use the
/// ones after it; modules in one group are peers that must not use each
/// other at all.
const LAYERS: &[&[&str]] = &[
    &["main", "lib", "bench"],
    &["server"],
    &["engine"],
    &["sql"],
    &["plan"],
    &["catalog"],
    &["connectors"],
    &["runtime"],
    &["stream"],
    &["state"],
    &["common"],
    &["error"],
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is not in LAYERS (tests/layering.rs)"))
}

/// A source file and the module path it defines (`["engine", "tables"]`).
struct SourceFile {
    path: PathBuf,
    module: Vec<String>,
    text: String,
}

fn source_files(dir: &Path, out: &mut Vec<SourceFile>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(src_dir()).expect("under src");
            let mut module: Vec<String> = relative
                .with_extension("")
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|m| m == "mod") {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            out.push(SourceFile { path, module, text });
        }
    }
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The text without comments and string literals (a path in a doc comment
/// or a message is not a reference).
fn code_of(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'r' if bytes.get(i + 1) == Some(&b'#') || bytes.get(i + 1) == Some(&b'"') => {
                // A raw string r"..." or r#"..."#; `r` inside a word is code.
                let word_before =
                    i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
                let mut j = i + 1;
                let mut hashes = 0;
                while bytes.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if word_before || bytes.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                let closing: String = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                match text[j + 1..].find(&closing) {
                    Some(end) => i = j + 1 + end + closing.len(),
                    None => i = bytes.len(),
                }
                out.push_str("\"\"");
            }
            b'\'' => {
                // A char literal ('x', '\n') or a lifetime ('a): keep lifetimes.
                let close = (i + 2..(i + 12).min(bytes.len())).find(|&j| bytes[j] == b'\'');
                match close {
                    Some(j)
                        if bytes[i + 1] == b'\\' || j == i + 2 || !text.is_char_boundary(i + 2) =>
                    {
                        out.push_str("' '");
                        i = j + 1;
                    }
                    _ => {
                        out.push('\'');
                        i += 1;
                    }
                }
            }
            _ => {
                let c = text[i..].chars().next().expect("char");
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// `code` without the items marked `#[cfg(test)]` (up to the end of the
/// item's braces, or its `;`).
fn without_test_items(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let open = item.find('{');
        let semicolon = item.find(';');
        rest = match (open, semicolon) {
            (Some(open), Some(semicolon)) if semicolon < open => &item[semicolon + 1..],
            (Some(open), _) => {
                let body = &item[open + 1..];
                &body[(matching_brace(body) + 1).min(body.len())..]
            }
            (None, Some(semicolon)) => &item[semicolon + 1..],
            (None, None) => "",
        };
    }
    out.push_str(rest);
    out
}

/// Every `crate::a::b` path in `code`, and every `use crate::{a::x, b}`
/// group, as the module path after `crate::` (as many segments as given).
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    paths_under(code, "crate::")
}

/// Every `super::a::b` path in `code` (also inside `use super::{...}`).
fn super_paths(code: &str) -> Vec<Vec<String>> {
    paths_under(code, "super::")
}

/// The paths that follow `root` (`crate::` or `super::`) in `code`, one per
/// item of a `{...}` group; `root` inside a longer word or path
/// (`my_crate::`, `super::super::`) does not count.
fn paths_under(code: &str, root: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(root) {
        let before = rest[..at].chars().last();
        rest = &rest[at + root.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            for item in split_top_level(&group[..end]) {
                paths.push(segments(item));
            }
            rest = &group[end..];
        } else {
            paths.push(segments(rest));
        }
    }
    paths
}

fn matching_brace(text: &str) -> usize {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    text.len()
}

fn split_top_level(text: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
}

/// `a::b::C` → `["a", "b", "C"]` (stops at anything that is not a path).
/// A group after the segments (`a::{b, c}`) names items in the module
/// they reach, which is all that matters here.
fn segments(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    loop {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        out.push(rest[..end].to_string());
        match rest[end..].strip_prefix("::") {
            Some(next) if !next.starts_with('{') => rest = next,
            _ => break,
        }
    }
    out
}

/// The module (as a path of existing files) that `path` names: its longest
/// prefix that is a module of `modules`.
fn resolve(path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| modules.contains(prefix))
}

#[test]
fn modules_only_reach_down_and_siblings_form_no_cycles() {
    let mut files = Vec::new();
    source_files(&src_dir(), &mut files);
    assert!(files.len() > 40, "found only {} source files", files.len());
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();

    let mut upward = Vec::new();
    let mut peer = Vec::new();
    // Per directory: edges between its files (not to the directory's own
    // mod.rs, which declares them and which they may use as their parent).
    let mut sibling_edges: BTreeMap<Vec<String>, BTreeSet<(String, String)>> = BTreeMap::new();
    let mut references = 0;

    for file in &files {
        let code = without_test_items(&code_of(&file.text));
        let top = file.module.first().map(String::as_str).unwrap_or("lib");
        let own_layer = layer_of(top);
        for path in crate_paths(&code) {
            let Some(target) = resolve(&path, &modules) else {
                continue; // a macro or item at the crate root (`crate::internal!`)
            };
            references += 1;
            let target_top = target[0].as_str();
            if target_top == top {
                note_sibling_edge(&file.module, &target, &mut sibling_edges);
                continue;
            }
            let target_layer = layer_of(target_top);
            if target_layer < own_layer {
                upward.push(format!(
                    "{} uses crate::{}",
                    file.path.display(),
                    path.join("::")
                ));
            } else if target_layer == own_layer {
                peer.push(format!(
                    "{} uses crate::{}",
                    file.path.display(),
                    path.join("::")
                ));
            }
        }
        // `super::x` from a file `a/b.rs` (module a::b) names a::x.
        if file.module.len() >= 2 {
            let parent = &file.module[..file.module.len() - 1];
            for path in super_paths(&code) {
                let mut full = parent.to_vec();
                full.extend(path);
                if let Some(target) = resolve(&full, &modules) {
                    references += 1;
                    note_sibling_edge(&file.module, &target, &mut sibling_edges);
                }
            }
        }
    }
    assert!(
        references > 300,
        "found only {references} references: is the scanner broken?"
    );

    let mut cycles = Vec::new();
    for (directory, edges) in &sibling_edges {
        for cycle in find_cycles(edges) {
            cycles.push(format!(
                "in src/{}: {}",
                directory.join("/"),
                cycle.join(" -> ")
            ));
        }
    }
    assert!(
        upward.is_empty() && peer.is_empty() && cycles.is_empty(),
        "the layout is broken (see tests/layering.rs and docs/ARCHITECTURE.md):\n\
         upward imports:\n  {}\npeer imports:\n  {}\nsibling cycles:\n  {}",
        upward.join("\n  "),
        peer.join("\n  "),
        cycles.join("\n  ")
    );
}

/// Notes `from` → `to` when both are files directly in the same directory
/// (neither being that directory's `mod.rs`), or are within such files.
fn note_sibling_edge(
    from: &[String],
    to: &[String],
    edges: &mut BTreeMap<Vec<String>, BTreeSet<(String, String)>>,
) {
    // The first segment where the two differ, under a common directory.
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    if common >= from.len() || common >= to.len() {
        return; // one is the other's parent (or itself)
    }
    let directory = from[..common].to_vec();
    edges
        .entry(directory)
        .or_default()
        .insert((from[common].clone(), to[common].clone()));
}

/// The cycles of a small directed graph (one per strongly connected
/// component of more than one node), each as the names on it.
fn find_cycles(edges: &BTreeSet<(String, String)>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    let reaches = |from: &String, to: &String| -> bool {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from];
        while let Some(node) = stack.pop() {
            for (a, b) in edges {
                if a == node && seen.insert(b) {
                    if b == to {
                        return true;
                    }
                    stack.push(b);
                }
            }
        }
        false
    };
    let mut done: BTreeSet<&String> = BTreeSet::new();
    let mut cycles = Vec::new();
    for node in &nodes {
        if done.contains(node) || !reaches(node, node) {
            continue;
        }
        let component: Vec<String> = nodes
            .iter()
            .filter(|other| reaches(node, other) && reaches(other, node))
            .map(|n| n.to_string())
            .collect();
        for member in &component {
            done.insert(nodes.iter().find(|n| **n == member).expect("node"));
        }
        if component.len() > 1 {
            cycles.push(component);
        }
    }
    cycles
}

#[test]
fn the_scanner_finds_what_it_must() {
    let code = without_test_items(&code_of(
        "use crate::a::B;\n// crate::ignored::X\nlet s = \"crate::nope\";\nuse crate::{b::C, c};\n\
         fn f<'a>(x: &'a str) -> char { 'x' }\nuse super::{d, e::F};\n\
         #[cfg(test)]\nmod tests { use crate::z::Y; fn g() { if true {} } }\n#[cfg(test)]\nuse crate::w;",
    ));
    assert_eq!(
        crate_paths(&code),
        vec![
            vec!["a".to_string(), "B".to_string()],
            vec!["b".to_string(), "C".to_string()],
            vec!["c".to_string()]
        ]
    );
    assert_eq!(
        super_paths(&code),
        vec![
            vec!["d".to_string()],
            vec!["e".to_string(), "F".to_string()]
        ]
    );
    let mut edges = BTreeSet::new();
    edges.insert(("a".to_string(), "b".to_string()));
    edges.insert(("b".to_string(), "a".to_string()));
    edges.insert(("b".to_string(), "c".to_string()));
    assert_eq!(
        find_cycles(&edges),
        vec![vec!["a".to_string(), "b".to_string()]]
    );
}
