//! The layer rule of docs/architecture.md, checked on the source: a module of the agent
//! imports only layers below its own, so data and knowledge flow one way (the datapath
//! never learns Kubernetes, nat never learns the connection table, flow never learns
//! classification or export). A new top-level module must be given a layer here.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

/// Bottom up. Modules of one layer may import each other only in the first (plain
/// utilities that import nothing else).
const LAYERS: &[&[&str]] = &[
    &[
        "net",
        "metric",
        "backoff",
        "shutdown",
        "input",
        "yaml_shape",
        "logging",
        "memory",
        "prefetch",
    ],
    &["config"],
    &["datapath"],
    &["identity"],
    &["nat"],
    &["dns"],
    &["process"],
    &["flow"],
    &["classify"],
    &["event"],
    &["lateral"],
    &["access"],
    &["export"],
    &["index"],
    &["relay"],
    &["inventory"],
    &["pipeline"],
    &["cli"],
];

/// Test scaffolding, compiled only under `cfg(test)`: it builds fixtures from any layer.
const TEST_ONLY: &[&str] = &["test_support", "fuzz_support"];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The crate-level modules a source file names (`crate::x`, `use crate::{x, y::…}`),
/// comments and its trailing `#[cfg(test)] mod tests` left out.
fn imports(text: &str) -> Vec<String> {
    let code: String = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or("")
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            out.extend(group_heads(group));
        } else {
            out.push(ident(rest).to_owned());
        }
    }
    out
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first path segment of every item in a `{…}` use group (nested groups skipped).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut at_item = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_item = true,
            c if at_item && depth == 0 && !c.is_whitespace() => {
                at_item = false;
                heads.push(ident(&group[i..]).to_owned());
            }
            _ => {}
        }
    }
    heads
}

/// Every import that breaks the rule, as a message naming the file, both modules and the fix.
fn violations(files: &[(PathBuf, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (path, text) in files {
        let Some(own) = top_module(path) else {
            continue;
        };
        if TEST_ONLY.contains(&own.as_str()) || is_test_file(path) {
            continue;
        }
        let Some(own_layer) = layer(&own) else {
            out.push(format!(
                "{}: module `{own}` has no layer: add it to LAYERS in agent/tests/layers.rs \
                 and to docs/architecture.md",
                path.display()
            ));
            continue;
        };
        for to in imports(text) {
            if to == own || TEST_ONLY.contains(&to.as_str()) {
                continue;
            }
            let Some(to_layer) = layer(&to) else {
                continue; // an item of lib.rs itself, or a macro path
            };
            if to_layer > own_layer || (to_layer == own_layer && own_layer != 0) {
                out.push(format!(
                    "{}: `{own}` (layer {own_layer}) imports `{to}` (layer {to_layer}): a module \
                     imports only layers below it (docs/architecture.md); move the shared piece \
                     down instead",
                    path.display()
                ));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `nat` for `nat/table.rs` or `nat.rs`; `None` for the crate root files.
fn top_module(path: &Path) -> Option<String> {
    let first = path.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

fn is_test_file(path: &Path) -> bool {
    path.file_name().is_some_and(|f| f == "tests.rs")
        || path.components().any(|c| c.as_os_str() == "tests")
}

fn sources(dir: &Path, base: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).expect("agent/src is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, base, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("source is UTF-8");
            out.push((path.strip_prefix(base).unwrap().to_owned(), text));
        }
    }
}

#[test]
fn every_module_imports_only_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &src, &mut files);
    assert!(files.len() > 100, "read the agent's sources");
    let found = violations(&files);
    assert!(found.is_empty(), "layer rule broken:\n{}", found.join("\n"));
}

#[test]
fn a_back_import_is_caught_in_both_forms() {
    let file = |p: &str, t: &str| (PathBuf::from(p), t.to_owned());
    let found = violations(&[
        file("nat/table.rs", "use crate::flow::FlowTuple;\n"),
        file(
            "datapath/attach.rs",
            "use crate::{\n    net::FastMap,\n    identity::{Name, Store},\n};\n",
        ),
        file(
            "flow/tracker.rs",
            "use crate::{nat::NatTable, net::FlowTuple};\n",
        ),
        file("flow/view.rs", "// see crate::export for the record\n"),
        file(
            "classify/x.rs",
            "fn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::export::X;\n}\n",
        ),
        file("newthing.rs", "fn f() {}\n"),
    ]);
    let modules: BTreeMap<&str, usize> = found
        .iter()
        .map(|m| (m.split(':').next().unwrap(), 1))
        .collect();
    assert_eq!(
        modules.keys().copied().collect::<Vec<_>>(),
        ["datapath/attach.rs", "nat/table.rs", "newthing.rs"],
        "{found:#?}"
    );
    assert!(found[0].contains("`datapath` (layer 2) imports `identity` (layer 3)"));
}
