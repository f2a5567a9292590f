//! The data plane's layering, checked from its source: policies never import
//! the proxy or the runtime snapshot, the upstream and edge layers never
//! import policies, and no import circle joins more than two files (in the
//! data plane, and in every other crate of the workspace).
//!
//! The checker reads every `.rs` file under `src`, resolves the `crate::`,
//! `super::` and child-module paths of each one to the file that defines the
//! module, and builds the file-level import graph from them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A source file: its path under `src` (with `/`) and its text.
type Source = (String, String);

/// One import of a file, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Import {
    /// Line number (from 1).
    line: usize,
    /// The line as written.
    text: String,
    /// The module path it names, from the crate root.
    path: Vec<String>,
}

/// The module path of a file under `src` (`None` for the binary's root).
fn module_of(file: &str) -> Option<Vec<String>> {
    let stem = file.strip_suffix(".rs")?;
    if stem == "main" {
        return None;
    }
    let mut parts: Vec<String> = stem.split('/').map(String::from).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    Some(parts)
}

/// The macros exported at the crate root, by the module that defines them.
fn exported_macros(sources: &[Source]) -> BTreeMap<String, Vec<String>> {
    let mut macros = BTreeMap::new();
    for (file, text) in sources {
        let Some(module) = module_of(file) else {
            continue;
        };
        let mut exported = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with("#[macro_export") {
                exported = true;
            } else if let Some(rest) = line.strip_prefix("macro_rules!") {
                if exported {
                    let name: String = rest.trim().chars().take_while(|c| is_ident(*c)).collect();
                    macros.insert(name, module.clone());
                }
                exported = false;
            }
        }
    }
    macros
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths of a use tree starting at `text` (after its root segment and
/// `::`), each as segments; `{a, b::{c, d}}` gives several.
fn use_tree(text: &str) -> Vec<Vec<String>> {
    fn parse(chars: &[char], at: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        let mut path = prefix;
        loop {
            while *at < chars.len() && chars[*at].is_whitespace() {
                *at += 1;
            }
            if *at >= chars.len() {
                out.push(path);
                return;
            }
            if chars[*at] == '{' {
                *at += 1;
                loop {
                    parse(chars, at, path.clone(), out);
                    while *at < chars.len() && chars[*at].is_whitespace() {
                        *at += 1;
                    }
                    match chars.get(*at) {
                        Some(',') => {
                            *at += 1;
                            while *at < chars.len() && chars[*at].is_whitespace() {
                                *at += 1;
                            }
                            if chars.get(*at) == Some(&'}') {
                                *at += 1;
                                return;
                            }
                        }
                        Some('}') => {
                            *at += 1;
                            return;
                        }
                        _ => return,
                    }
                }
            }
            let start = *at;
            while *at < chars.len() && (is_ident(chars[*at]) || chars[*at] == '*') {
                *at += 1;
            }
            let segment: String = chars[start..*at].iter().collect();
            if !segment.is_empty() && segment != "self" && segment != "*" {
                path.push(segment);
            }
            if chars.get(*at) == Some(&':') && chars.get(*at + 1) == Some(&':') {
                *at += 2;
                continue;
            }
            out.push(path);
            return;
        }
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    parse(&chars, &mut 0, Vec::new(), &mut out);
    out
}

/// The code of a line without its `//` comment (string contents are kept:
/// a path in a string is rare enough to be a real reference).
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(at) => &line[..at],
        None => line,
    }
}

/// Whether `file` holds tests only (`tests.rs`, `test_support.rs`): what
/// tests import does not make a circle of the shipped code.
fn is_test_file(file: &str) -> bool {
    matches!(
        file.rsplit('/').next(),
        Some("tests.rs" | "test_support.rs")
    )
}

/// The resolved imports of one file's shipped code (up to its top-level
/// `#[cfg(test)]`): `crate::` paths anywhere in its code, and
/// `use super::`/`use self::`/`use child::` at the top level.
fn imports_of(
    file: &str,
    text: &str,
    children: &BTreeSet<String>,
    macros: &BTreeMap<String, Vec<String>>,
) -> Vec<Import> {
    let Some(module) = module_of(file) else {
        return Vec::new();
    };
    if is_test_file(file) {
        return Vec::new();
    }
    // A `foo.rs` file is module `foo`, whose children live in `foo/`.
    let mut imports = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        let code = code(line);
        let mut push = |path: Vec<String>| {
            imports.push(Import {
                line: index + 1,
                text: line.trim().to_string(),
                path,
            })
        };
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().last();
            let after = &rest[at + "crate::".len()..];
            rest = after;
            if before.is_some_and(|c| is_ident(c) || c == '$') {
                continue;
            }
            let name: String = after.chars().take_while(|c| is_ident(*c)).collect();
            if after[name.len()..].starts_with('!') {
                if let Some(home) = macros.get(&name) {
                    push(home.clone());
                }
                continue;
            }
            for path in use_tree(after) {
                push(path);
            }
        }
        // Relative `use` at the top level only: indented ones are in inline
        // modules (`mod tests`), whose `super` is the file itself.
        let Some(tree) = top_level_use(code) else {
            continue;
        };
        let root: String = tree.chars().take_while(|c| is_ident(*c)).collect();
        let after = tree[root.len()..].strip_prefix("::").unwrap_or("");
        let base = match root.as_str() {
            "super" => module[..module.len().saturating_sub(1)].to_vec(),
            "self" => module.clone(),
            child if children.contains(child) => {
                let mut base = module.clone();
                base.push(child.to_string());
                base
            }
            _ => continue,
        };
        for path in use_tree(after) {
            let mut full = base.clone();
            full.extend(path);
            push(full);
        }
    }
    imports
}

/// The use tree of a top-level `use` line (any visibility), if it is one.
fn top_level_use(line: &str) -> Option<&str> {
    if line.starts_with(char::is_whitespace) {
        return None;
    }
    let mut rest = line;
    if let Some(after) = rest.strip_prefix("pub") {
        rest = match after.strip_prefix('(') {
            Some(inner) => inner.split_once(')')?.1,
            None => after,
        };
        rest = rest.trim_start();
    }
    rest.strip_prefix("use ")
}

/// The file that defines the longest prefix of `path` among `files`.
fn file_of<'a>(path: &[String], files: &'a BTreeMap<Vec<String>, String>) -> Option<&'a String> {
    (0..=path.len())
        .rev()
        .find_map(|n| files.get(&path[..n].to_vec()))
}

/// What the checker found wrong.
#[derive(Debug, Default)]
struct Report {
    /// Imports that cross a layer the wrong way (`file:line: text`).
    forbidden: Vec<String>,
    /// Groups of more than two files that import each other in a circle
    /// (strongly connected components), each as its files in order.
    circles: Vec<Vec<String>>,
    /// The file-level import graph.
    graph: BTreeMap<String, BTreeSet<String>>,
}

impl Report {
    fn is_clean(&self) -> bool {
        self.forbidden.is_empty() && self.circles.is_empty()
    }
}

/// The layering rules: what files under a folder may not import.
const RULES: &[(&str, &[&str], &str)] = &[
    ("policy/", &["proxy"], "a policy imports the proxy"),
    (
        "policy/",
        &["config", "runtime"],
        "a policy imports the runtime snapshot",
    ),
    (
        "upstream/",
        &["policy"],
        "the upstream layer imports a policy",
    ),
    ("edge/", &["policy"], "the edge imports a policy"),
];

/// Checks `sources` (paths under `src`, with their text).
fn check(sources: &[Source]) -> Report {
    let files: BTreeMap<Vec<String>, String> = sources
        .iter()
        .filter_map(|(file, _)| Some((module_of(file)?, file.clone())))
        .collect();
    let macros = exported_macros(sources);
    let mut report = Report::default();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, text) in sources {
        let Some(module) = module_of(file) else {
            continue;
        };
        let children: BTreeSet<String> = files
            .keys()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(&module))
            .filter_map(|m| m.last().cloned())
            .collect();
        let edges = graph.entry(file.clone()).or_default();
        for import in imports_of(file, text, &children, &macros) {
            for (folder, banned, why) in RULES {
                let banned: Vec<String> = banned.iter().map(|s| s.to_string()).collect();
                if file.starts_with(folder) && import.path.starts_with(&banned) {
                    report
                        .forbidden
                        .push(format!("{file}:{}: {why}: {}", import.line, import.text));
                }
            }
            if let Some(target) = file_of(&import.path, &files) {
                if target != file {
                    edges.insert(target.clone());
                }
            }
        }
    }
    report.forbidden.sort();
    report.circles = circles(&graph)
        .into_iter()
        .filter(|c| c.len() > 2)
        .collect();
    report.graph = graph;
    report
}

/// The strongly connected components of `graph` with more than one file,
/// each as its files in order.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let reach = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(node) = stack.pop() {
            for next in graph.get(&node).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|n| (n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut found = Vec::new();
    for node in graph.keys() {
        if done.contains(node) {
            continue;
        }
        let component: Vec<String> = graph
            .keys()
            .filter(|other| {
                *other == node
                    || (reachable[node].contains(*other) && reachable[*other].contains(node))
            })
            .cloned()
            .collect();
        done.extend(component.iter().cloned());
        if component.len() > 1 {
            found.push(component);
        }
    }
    found
}

/// The shortest circle from the first file of `component` back to it.
fn circle_through(graph: &BTreeMap<String, BTreeSet<String>>, component: &[String]) -> Vec<String> {
    let inside: BTreeSet<&String> = component.iter().collect();
    let start = &component[0];
    let mut parent: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.clone()]);
    while let Some(node) = queue.pop_front() {
        for next in graph.get(&node).into_iter().flatten() {
            if !inside.contains(next) {
                continue;
            }
            if next == start {
                let mut circle = vec![node.clone()];
                let mut at = node.clone();
                while let Some(p) = parent.get(&at) {
                    circle.push(p.clone());
                    at = p.clone();
                }
                circle.reverse();
                return circle;
            }
            if !parent.contains_key(next) {
                parent.insert(next.clone(), node.clone());
                queue.push_back(next.clone());
            }
        }
    }
    component.to_vec()
}

/// Every `.rs` file under `dir`, with paths relative to `root`.
fn read_tree(root: &Path, dir: &Path, out: &mut Vec<Source>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_tree(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("readable source file");
            let name = path
                .strip_prefix(root)
                .expect("under the source root")
                .to_string_lossy()
                .replace('\\', "/");
            out.push((name, text));
        }
    }
}

/// What is wrong in `report`, one line each.
fn problems(report: &Report) -> Vec<String> {
    let mut problems = report.forbidden.clone();
    for files in &report.circles {
        let circle = circle_through(&report.graph, files);
        problems.push(format!(
            "{} files import each other in a circle: {}; for one: {} -> {}",
            files.len(),
            files.join(", "),
            circle.join(" -> "),
            circle[0]
        ));
    }
    problems
}

/// The sources of the workspace crate in folder `krate`.
fn crate_sources(krate: &str) -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src");
    let mut sources = Vec::new();
    read_tree(&root, &root, &mut sources);
    assert!(sources.len() > 5, "the sources of {krate} were not found");
    sources
}

#[test]
fn the_data_plane_keeps_its_layers() {
    let report = check(&crate_sources("data-plane"));
    assert!(
        report.is_clean(),
        "layering broken:\n{}",
        problems(&report).join("\n")
    );
}

#[test]
fn no_other_crate_has_an_import_circle_of_more_than_two_files() {
    for krate in ["common", "control-plane", "gwctl", "tests"] {
        let report = check(&crate_sources(krate));
        assert!(
            report.circles.is_empty(),
            "{krate}:\n{}",
            problems(&report).join("\n")
        );
    }
}

fn source(file: &str, text: &str) -> Source {
    (file.to_string(), text.to_string())
}

#[test]
fn a_policy_importing_the_proxy_or_the_snapshot_is_named() {
    let report = check(&[
        source(
            "lib.rs",
            "pub mod config;\npub mod policy;\npub mod proxy;\n",
        ),
        source("proxy.rs", ""),
        source("config/mod.rs", "pub mod runtime;\n"),
        source("config/runtime.rs", ""),
        source("policy/mod.rs", "pub mod cors;\n"),
        source(
            "policy/cors.rs",
            "use crate::proxy::Proxy;\nuse crate::{config::runtime::Snapshot, rolling};\n",
        ),
    ]);
    assert_eq!(
        report.forbidden,
        vec![
            "policy/cors.rs:1: a policy imports the proxy: use crate::proxy::Proxy;",
            "policy/cors.rs:2: a policy imports the runtime snapshot: use crate::{config::runtime::Snapshot, rolling};",
        ]
    );
}

#[test]
fn lower_layers_importing_a_policy_are_named() {
    let report = check(&[
        source("policy/mod.rs", ""),
        source(
            "upstream/pool.rs",
            "fn f() { let _ = crate::policy::cors::Cors::new(); }\n",
        ),
        source("edge/server.rs", "// crate::policy is only named here\n"),
        source("edge/errors.rs", "    use crate::policy;\n"),
    ]);
    assert_eq!(report.forbidden.len(), 2, "{:?}", report.forbidden);
    assert!(report.forbidden[0].starts_with("edge/errors.rs:1: the edge imports a policy"));
    assert!(report.forbidden[1].starts_with("upstream/pool.rs:1: the upstream layer"));
}

#[test]
fn a_circle_of_three_files_is_found_and_two_are_allowed() {
    let report = check(&[
        source("a.rs", "use crate::b::B;\n"),
        source("b.rs", "use crate::c::{C, D};\n"),
        source("c.rs", "pub fn f() { crate::a::g() }\n"),
        source("d.rs", "use crate::e;\n"),
        source("e.rs", "use crate::d;\n"),
    ]);
    assert!(report.forbidden.is_empty());
    assert_eq!(report.circles, vec![vec!["a.rs", "b.rs", "c.rs"]]);
    assert_eq!(
        circle_through(&report.graph, &report.circles[0]),
        vec!["a.rs", "b.rs", "c.rs"]
    );
}

#[test]
fn relative_paths_and_macros_are_resolved() {
    let report = check(&[
        source("lib.rs", "pub mod x;\n"),
        source("x/mod.rs", "mod child;\nuse child::Thing;\n"),
        source("x/child.rs", "use super::other::Other;\n"),
        source(
            "x/other.rs",
            "#[macro_export]\nmacro_rules! shout { () => {} }\nfn f() { crate::x::g(); }\n",
        ),
        source("y.rs", "fn f() { crate::shout!(); }\n"),
    ]);
    assert_eq!(
        report.circles,
        vec![vec!["x/child.rs", "x/mod.rs", "x/other.rs"]]
    );
    assert_eq!(
        circle_through(&report.graph, &report.circles[0]),
        vec!["x/child.rs", "x/other.rs", "x/mod.rs"]
    );
    let files: BTreeMap<Vec<String>, String> = [(vec!["x".to_string()], "x/mod.rs".to_string())]
        .into_iter()
        .collect();
    assert_eq!(
        file_of(&["x".into(), "Thing".into()], &files),
        Some(&"x/mod.rs".to_string())
    );
    assert_eq!(use_tree("a::{b, c::{d, e}, f}").len(), 4);
}
