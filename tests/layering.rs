//! The top-level modules of `src/` form layers: none uses another that
//! uses it back, directly or through others. A cycle is how rooms blur
//! (a change in one ripples into the other and back), so the suite refuses
//! one, naming the files that close it.
//!
//! The check reads the source: every `crate::NAME` outside comments is a
//! use of the top-level module NAME. A grouped `use crate::{a, b}` would
//! hide uses from it and is refused too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The edges between top-level modules, each with the files that make it.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

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

/// The top-level module names `text` uses (`crate::NAME`), outside comments.
fn uses(text: &str) -> Result<BTreeSet<String>, String> {
    let mut found = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            if after.starts_with('{') {
                return Err(format!(
                    "line {}: a grouped `use crate::{{…}}` hides what it uses: one `use` per module",
                    n + 1
                ));
            }
            let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
    }
    Ok(found)
}

fn graph(src: &Path) -> Graph {
    let mut tops = BTreeSet::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() || (path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main") {
            tops.insert(name);
        }
    }
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut g = Graph::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy();
        let top = top.strip_suffix(".rs").unwrap_or(&top).to_owned();
        if !tops.contains(&top) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let used = uses(&text).unwrap_or_else(|e| panic!("{}: {e}", rel.display()));
        for to in used.into_iter().filter(|t| tops.contains(t) && *t != top) {
            g.entry(top.clone()).or_default().entry(to).or_default().insert(rel.display().to_string());
        }
    }
    g
}

/// A cycle through the graph, if there is one, as the modules on it.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(g: &Graph, at: &str, marks: &mut BTreeMap<String, Mark>, path: &mut Vec<String>) -> Option<Vec<String>> {
        match marks.get(at) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = path.iter().position(|m| m == at).unwrap();
                return Some(path[from..].to_vec());
            }
            None => {}
        }
        marks.insert(at.to_owned(), Mark::Open);
        path.push(at.to_owned());
        for next in g.get(at).into_iter().flat_map(|e| e.keys()) {
            if let Some(c) = visit(g, next, marks, path) {
                return Some(c);
            }
        }
        path.pop();
        marks.insert(at.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    g.keys().find_map(|m| visit(g, m, &mut marks, &mut Vec::new()))
}

fn describe(g: &Graph, cycle: &[String]) -> String {
    let mut lines = vec![format!("a cycle: {} -> {}", cycle.join(" -> "), cycle[0])];
    for (i, from) in cycle.iter().enumerate() {
        let to = &cycle[(i + 1) % cycle.len()];
        let files: Vec<_> = g[from][to].iter().cloned().collect();
        lines.push(format!("  {from} -> {to} in {}", files.join(", ")));
    }
    lines.join("\n")
}

#[test]
fn the_top_level_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    // The check sees the layers at all (a broken reader finds nothing).
    assert!(g.get("agent").is_some_and(|e| e.contains_key("host")), "{g:?}");
    if let Some(cycle) = find_cycle(&g) {
        panic!("{}", describe(&g, &cycle));
    }
}

#[test]
fn the_check_finds_a_cycle_through_a_third_module() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a; pub mod b; pub mod c;").unwrap();
    std::fs::write(src.join("a/mod.rs"), "//! Not [`crate::c`]: a comment.\nuse crate::b::B;").unwrap();
    std::fs::write(src.join("b.rs"), "pub fn f() { crate::c::g() }").unwrap();
    std::fs::write(src.join("c.rs"), "pub fn g() {}").unwrap();
    assert_eq!(find_cycle(&graph(src)), None, "comments do not count");
    std::fs::write(src.join("c.rs"), "pub fn g() { let _ = crate::a::A; }").unwrap();
    let g = graph(src);
    let cycle = find_cycle(&g).expect("a -> b -> c -> a");
    assert_eq!(cycle, ["a", "b", "c"]);
    assert!(describe(&g, &cycle).contains("c -> a in c.rs"), "{}", describe(&g, &cycle));
}

#[test]
fn a_grouped_use_is_refused() {
    assert!(uses("use crate::{host, kube};").unwrap_err().contains("grouped"));
    assert_eq!(
        uses("x = crate::host::paths::Paths::new(crate::kube::X)").unwrap(),
        ["host", "kube"].map(String::from).into()
    );
}
