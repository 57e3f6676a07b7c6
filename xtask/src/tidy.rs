//! Architecture invariants, checked on the dependency graph itself.

use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::process::Command;

/// Every package a package depends on at run time (normal edges, transitively).
fn runtime_deps(root: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            "x86_64-unknown-linux-gnu",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("id"), p["name"].as_str().expect("name")))
        .collect();
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve nodes")
        .iter()
        .map(|n| (n["id"].as_str().expect("id"), n))
        .collect();
    let start = names.iter().find(|(_, n)| **n == root).map(|(id, _)| *id).expect("package exists");
    let (mut seen, mut stack) = (BTreeSet::new(), vec![start]);
    while let Some(id) = stack.pop() {
        for dep in nodes[id]["deps"].as_array().expect("deps") {
            let normal = dep["dep_kinds"].as_array().expect("dep_kinds").iter().any(|k| k["kind"].is_null());
            let pkg = dep["pkg"].as_str().expect("pkg");
            if normal && seen.insert(names[pkg].to_string()) {
                stack.push(pkg);
            }
        }
    }
    seen
}

fn assert_free_of(krate: &str, forbidden: &[&str]) {
    let deps = runtime_deps(krate);
    assert!(deps.len() > 1, "{krate}: the graph walk found no dependencies, the check is broken");
    let found: Vec<_> = forbidden.iter().filter(|f| deps.contains(**f)).collect();
    assert!(found.is_empty(), "{krate} must not depend on {found:?}");
}

const IO: &[&str] = &[
    "tokio-postgres",
    "postgres",
    "deadpool-postgres",
    "reqwest",
    "hyper",
    "hyper-util",
    "axum",
    "object_store",
];

#[test]
fn the_domain_depends_on_no_io_crate_and_no_runtime() {
    assert_free_of("terrace-domain", IO);
    assert_free_of("terrace-domain", &["tokio", "futures"]);
}

#[test]
fn ports_and_engine_depend_on_no_io_crate() {
    assert_free_of("terrace-ports", IO);
    assert_free_of("terrace-engine", IO);
    assert_free_of("terrace-memory", IO);
}

#[test]
fn the_check_sees_io_crates_where_they_are() {
    // Guards the walk itself: a graph reader that found nothing would pass the
    // checks above vacuously.
    let deps = runtime_deps("xtask");
    assert!(deps.contains("serde_json") && deps.contains("anyhow"), "{deps:?}");
}
