//! The route table against the OpenAPI document it is derived from.

use std::collections::BTreeSet;

use wikigate::routes::{Operation, Route, Verb};

const SPEC: &str = include_str!("../../spec/confluence-user-api.json");

#[test]
fn the_route_table_is_the_openapi_documents() {
    let spec: serde_json::Value = serde_json::from_str(SPEC).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            documented.insert((
                path.clone(),
                method.to_uppercase(),
                operation["operationId"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let table: BTreeSet<(String, String, String)> = Operation::ALL
        .iter()
        .map(|op| {
            let method = match op.verb() {
                Verb::Get => "GET",
                Verb::Post => "POST",
                Verb::Put => "PUT",
                Verb::Delete => "DELETE",
            };
            (
                op.route().template().to_owned(),
                method.to_owned(),
                op.id().to_owned(),
            )
        })
        .collect();
    assert_eq!(table, documented);
    assert_eq!(Route::ALL.len(), spec["paths"].as_object().unwrap().len());
}

#[test]
fn the_spec_copy_matches_the_shared_document() {
    // The copy lets a fresh clone run every test; where ../shared/ exists it must not drift.
    let shared = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/confluence-user-api.json"
    );
    if let Ok(original) = std::fs::read_to_string(shared) {
        assert_eq!(
            original, SPEC,
            "spec/confluence-user-api.json drifted from ../shared/"
        );
    }
}
