//! `POST /{db}/_bulk_docs`: many document writes (new messages, deletions)
//! in one request, and what its answer says about each document.
//!
//! A `_bulk_docs` answer is `201` with one entry per document, each either
//! `{"ok": true, "id", "rev"}` or `{"id", "error", "reason"}`: a request
//! can succeed while some of its documents were refused. The entries are
//! matched to the documents by id, not by position: pouchdb-server answers
//! the documents its validation refused first.

use std::collections::HashMap;

use kombu_core::{Error, ErrorKind, Result};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::CouchClient;

/// Most documents one request carries.
pub(crate) const MAX_DOCS: usize = 256;
/// Most payload bytes one request carries (a larger document goes alone).
/// CouchDB 3 accepts requests of up to 4 GiB by default
/// (`max_http_request_size`) and documents of up to 8 MiB
/// (`max_document_size`): the bound keeps each request quick to send and
/// well within any configured limit.
pub(crate) const MAX_BYTES: usize = 4 << 20;

/// What happened to one document of a `_bulk_docs` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Written.
    Stored,
    /// Refused: CouchDB's `error` (`conflict`, `forbidden`, ...) and `reason`.
    Refused { error: String, reason: String },
}

/// Split `docs` into request-sized batches (at most [`MAX_DOCS`] documents
/// and, unless one document alone is larger, [`MAX_BYTES`] of `size`), in
/// order.
pub(crate) fn batches<T>(docs: Vec<T>, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for doc in docs {
        let doc_bytes = size(&doc);
        if !batch.is_empty() && (batch.len() >= MAX_DOCS || bytes + doc_bytes > MAX_BYTES) {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += doc_bytes;
        batch.push(doc);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// Write `docs` in one request; the outcome of each, in the order of
/// `docs`. An answer that is not a list with an entry for every document is
/// a protocol error (what was written is then unknown).
pub(crate) async fn write(
    client: &CouchClient,
    docs: Vec<Value>,
    what: &str,
) -> Result<Vec<Outcome>> {
    let ids: Vec<String> = docs
        .iter()
        .map(|doc| {
            doc.get("_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let body = client
        .send(
            Method::POST,
            &["_bulk_docs"],
            &[],
            Some(&json!({ "docs": docs })),
            None,
        )
        .await?
        .ok(what)?;
    outcomes(&body, &ids, what)
}

/// The outcome of each of `ids` in a `_bulk_docs` answer.
pub(crate) fn outcomes(answer: &Value, ids: &[String], what: &str) -> Result<Vec<Outcome>> {
    let entries = answer.as_array().ok_or_else(|| {
        Error::protocol(format!(
            "couchdb: {what}: _bulk_docs answered something other than a list"
        ))
    })?;
    let mut by_id: HashMap<&str, Outcome> = HashMap::with_capacity(entries.len());
    for entry in entries {
        let Some(id) = entry.get("id").and_then(Value::as_str) else {
            continue;
        };
        let outcome = match entry.get("error") {
            None | Some(Value::Null) => Outcome::Stored,
            Some(error) => Outcome::Refused {
                error: error.as_str().unwrap_or("error").to_owned(),
                reason: entry
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            },
        };
        by_id.insert(id, outcome);
    }
    ids.iter()
        .map(|id| {
            by_id.get(id.as_str()).cloned().ok_or_else(|| {
                Error::protocol(format!(
                    "couchdb: {what}: _bulk_docs said nothing about {} of the {} documents sent",
                    ids.iter()
                        .filter(|id| !by_id.contains_key(id.as_str()))
                        .count(),
                    ids.len()
                ))
            })
        })
        .collect()
}

/// The error for refused documents: how many of `total`, and the first
/// refusal (its kind follows CouchDB's `error`).
pub(crate) fn refused(what: &str, refusals: &[(&str, &str)], total: usize) -> Error {
    let (error, reason) = refusals.first().copied().unwrap_or(("error", ""));
    let kind = match error {
        "conflict" => ErrorKind::PreconditionFailed,
        "unauthorized" => ErrorKind::Auth,
        "not_found" => ErrorKind::NotFound,
        "too_large" | "document_too_large" => ErrorKind::LimitExceeded,
        _ => ErrorKind::Rejected,
    };
    Error::new(
        kind,
        format!(
            "couchdb: {what}: {} of {total} documents refused (the others were written): \
             {error} {reason}",
            refusals.len()
        )
        .trim_end()
        .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|id| (*id).to_owned()).collect()
    }

    #[test]
    fn outcomes_are_matched_by_id() {
        // pouchdb-server lists what its validation refused first.
        let answer = json!([
            {"id": "b", "error": "forbidden", "reason": "no"},
            {"ok": true, "id": "a", "rev": "1-x"},
            {"ok": true, "id": "c", "rev": "1-y"},
        ]);
        let got = outcomes(&answer, &ids(&["a", "b", "c"]), "store").unwrap();
        assert_eq!(
            got,
            vec![
                Outcome::Stored,
                Outcome::Refused {
                    error: "forbidden".into(),
                    reason: "no".into()
                },
                Outcome::Stored,
            ]
        );
    }

    #[test]
    fn a_missing_entry_or_a_bad_answer_is_a_protocol_error() {
        let answer = json!([{"ok": true, "id": "a", "rev": "1-x"}]);
        let err = outcomes(&answer, &ids(&["a", "b"]), "store").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
        assert!(err.to_string().contains("1 of the 2"), "{err}");
        let err = outcomes(&json!({"ok": true}), &ids(&["a"]), "store").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
    }

    #[test]
    fn refusals_name_the_first_and_count() {
        let err = refused(
            "store messages",
            &[("forbidden", "no"), ("forbidden", "no")],
            5,
        );
        assert_eq!(err.kind(), ErrorKind::Rejected);
        assert!(
            err.to_string().contains("2 of 5 documents refused"),
            "{err}"
        );
        assert!(err.to_string().ends_with("forbidden no"), "{err}");
        let conflict = refused("x", &[("conflict", "Document update conflict.")], 1);
        assert_eq!(conflict.kind(), ErrorKind::PreconditionFailed);
    }

    #[test]
    fn batches_keep_order_and_bounds() {
        let docs: Vec<usize> = (0..600).collect();
        let split = batches(docs, |_| 10);
        assert_eq!(
            split.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![256, 256, 88]
        );
        assert_eq!(split.concat(), (0..600).collect::<Vec<_>>());
        // By bytes: two documents of 3 MiB cannot share a request; one
        // larger than the bound goes alone.
        let sizes = vec![3 << 20, 3 << 20, 5 << 20, 1, 1];
        let split = batches(sizes, |s| *s);
        assert_eq!(
            split,
            vec![vec![3 << 20], vec![3 << 20], vec![5 << 20], vec![1, 1]]
        );
        assert!(batches(Vec::<usize>::new(), |_| 1).is_empty());
    }
}
