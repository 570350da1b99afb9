//! The log routes of the admin plane: receipts by id, entries by index, the latest checkpoint,
//! the checkpoint key, and inclusion and consistency proofs (`lap_tlog::json` forms).
//!
//! Without `size`/`new`, proofs are made against the latest checkpoint's tree size, so they
//! verify against a signed root. In batched mode only entries under the latest durable
//! checkpoint exist for readers (`Ledger::served_size`): an entry past it belongs to a batch
//! whose calls are not released yet and may still be refused.

use super::{text, Answer, Refusal};
use crate::evidence::Evidence;
use lap_tlog::json::{encode_hash, encode_hashes, ConsistencyProofJson, InclusionProofJson};
use lap_tlog::merkle::RangeError;
use lap_tlog::store::StoreError;

/// Answers a `/v1/…` log route.
pub fn route(ev: &Evidence, path: &str, query: &str) -> Answer {
    if let Some(id) = path.strip_prefix("/v1/receipts/") {
        return receipt(ev, id);
    }
    if let Some(index) = path.strip_prefix("/v1/log/entries/") {
        return entry(ev, index);
    }
    match path {
        "/v1/log/checkpoint" => match ev.ledger().checkpoint() {
            Some(note) => Ok(text(200, "text/plain; charset=utf-8", note.into_bytes())),
            None => Err(Refusal::new(
                404,
                "NO_CHECKPOINT",
                "no checkpoint has been issued yet",
            )),
        },
        "/v1/log/vkey" => Ok(text(
            200,
            "text/plain; charset=utf-8",
            format!("{}\n", ev.ledger().log_vkey()).into_bytes(),
        )),
        "/v1/log/proof/inclusion" => inclusion(ev, query),
        "/v1/log/proof/consistency" => consistency(ev, query),
        _ => Err(Refusal::not_found()),
    }
}

fn read_failed(e: StoreError) -> Refusal {
    tracing::error!(error = %e, "cannot read the receipt log");
    Refusal::new(500, "LOG_READ_FAILED", "the receipt log could not be read")
}

/// `/v1/receipts/{id}`: the log entry (envelope or batched leaf), with its position in
/// `x-lap-log-index`. The id names the position; the entry there must carry that id.
fn receipt(ev: &Evidence, id: &str) -> Answer {
    let not_found = || {
        Refusal::new(
            404,
            "RECEIPT_NOT_FOUND",
            "no receipt with this id in this log",
        )
    };
    let index = ev
        .index_of(id)
        .filter(|&i| i < ev.ledger().served_size())
        .ok_or_else(not_found)?;
    let entry = ev.ledger().store().read(index).map_err(read_failed)?;
    let named = lap_receipt::open_entry(&entry).is_ok_and(|e| e.receipt().receipt_id == id);
    if !named {
        return Err(not_found());
    }
    let mut r = text(200, "application/json", entry);
    r.headers_mut()
        .insert("x-lap-log-index", http::HeaderValue::from(index));
    Ok(r)
}

/// `/v1/log/entries/{index}`.
fn entry(ev: &Evidence, index: &str) -> Answer {
    let index = index
        .parse::<u64>()
        .map_err(|_| Refusal::new(400, "BAD_INDEX", "the index must be a number"))?;
    let missing = || Refusal::new(404, "ENTRY_NOT_FOUND", "no entry at this index");
    if index >= ev.ledger().served_size() {
        return Err(missing());
    }
    match ev.ledger().store().read(index) {
        Ok(entry) => Ok(text(200, "application/json", entry)),
        Err(StoreError::NoSuchEntry { .. }) => Err(missing()),
        Err(e) => Err(read_failed(e)),
    }
}

/// A proof that could not be made: a range that does not fit the tree (the caller's), or a
/// failed read of the tree's older nodes from disk (ours).
fn proof_failed(e: StoreError) -> Refusal {
    match e {
        StoreError::Range(e) => Refusal::new(400, "BAD_RANGE", e.to_string()),
        e => read_failed(e),
    }
}

/// `/v1/log/proof/inclusion?index=I[&size=N]`.
fn inclusion(ev: &Evidence, query: &str) -> Answer {
    let index = query_u64(query, "index")?
        .ok_or_else(|| Refusal::new(400, "BAD_QUERY", "index is required"))?;
    let size = size_or_checkpoint(ev, query, "size")?;
    let doc = ev
        .ledger()
        .store()
        .with_tree(|t| {
            Ok::<_, StoreError>(InclusionProofJson {
                index,
                tree_size: size,
                hashes: encode_hashes(&t.inclusion_proof(index, size)?),
                root_hash: encode_hash(&t.root(size)?),
                leaf_hash: Some(encode_hash(&t.leaf(index)?)),
            })
        })
        .map_err(proof_failed)?;
    Ok(super::json(200, &doc))
}

/// `/v1/log/proof/consistency?old=M[&new=N]`.
fn consistency(ev: &Evidence, query: &str) -> Answer {
    let old = query_u64(query, "old")?
        .ok_or_else(|| Refusal::new(400, "BAD_QUERY", "old is required"))?;
    let new = size_or_checkpoint(ev, query, "new")?;
    let doc = ev
        .ledger()
        .store()
        .with_tree(|t| {
            Ok::<_, StoreError>(ConsistencyProofJson {
                old_size: old,
                new_size: new,
                hashes: encode_hashes(&t.consistency_proof(old, new)?),
                old_root: encode_hash(&t.root(old)?),
                new_root: encode_hash(&t.root(new)?),
            })
        })
        .map_err(proof_failed)?;
    Ok(super::json(200, &doc))
}

/// A numeric query parameter (the first one of that name).
fn query_u64(query: &str, name: &str) -> Result<Option<u64>, Refusal> {
    for pair in query.split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            if k == name {
                return v.parse().map(Some).map_err(|_| {
                    Refusal::new(400, "BAD_QUERY", format!("{name} must be a number"))
                });
            }
        }
    }
    Ok(None)
}

/// A tree-size parameter, defaulting to the latest checkpoint's size; never beyond what
/// readers may see.
fn size_or_checkpoint(ev: &Evidence, query: &str, name: &str) -> Result<u64, Refusal> {
    match query_u64(query, name)? {
        Some(n) if n > ev.ledger().served_size() => Err(proof_failed(
            RangeError::Size {
                size: n,
                log_size: ev.ledger().served_size(),
            }
            .into(),
        )),
        Some(n) => Ok(n),
        None => ev.checkpoint_size().ok_or_else(|| {
            Refusal::new(
                404,
                "NO_CHECKPOINT",
                format!("no checkpoint yet; pass {name}"),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_query_parameters() {
        assert_eq!(
            query_u64("a=1&index=7&index=8", "index").ok(),
            Some(Some(7))
        );
        assert_eq!(query_u64("", "index").ok(), Some(None));
        assert_eq!(query_u64("indexx=1", "index").ok(), Some(None));
        let e = query_u64("index=-1", "index").err().unwrap();
        assert_eq!((e.status, e.code), (400, "BAD_QUERY"));
    }
}
