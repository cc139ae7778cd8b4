//! Small helpers for RESP replies and commands, shared by every part of the reader.
//!
//! Reading a live value means picking apart many reply shapes (bulk strings, arrays, the flat
//! `name, value, ...` maps of `XINFO`). A reply of the wrong shape is not an I/O error here: it
//! means the key changed between two rounds (or the server answered an error), so it becomes
//! an [`Unstable`], which makes the key be read again from the start.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::resp::Reply;

/// A command as its arguments.
pub(super) type Cmd = Vec<Bytes>;

pub(super) fn cmd(parts: &[&[u8]]) -> Cmd {
    parts.iter().map(|p| Bytes::copy_from_slice(p)).collect()
}

/// Bytes of a bulk or simple-string reply.
pub(super) fn bytes_of(r: &Reply) -> Option<Bytes> {
    match r {
        Reply::Bulk(Some(b)) | Reply::Simple(b) => Some(b.clone()),
        _ => None,
    }
}

pub(super) fn text_of(r: &Reply) -> Option<String> {
    bytes_of(r).map(|b| String::from_utf8_lossy(&b).into_owned())
}

pub(super) fn array_of(r: &Reply) -> Option<&[Reply]> {
    match r {
        Reply::Array(Some(v)) => Some(v),
        _ => None,
    }
}

/// A flat `name, value, name, value` array (XINFO replies) as a map.
pub(super) fn flat_map(r: &Reply) -> Option<BTreeMap<String, &Reply>> {
    let items = array_of(r)?;
    let mut m = BTreeMap::new();
    for pair in items.chunks(2) {
        if let [k, v] = pair {
            m.insert(text_of(k)?, v);
        }
    }
    Some(m)
}

/// A reply that does not have the expected shape: the key changed between two rounds (or the
/// server answered an error), so it is read again.
#[derive(Debug)]
pub(super) struct Unstable(pub(super) String);

pub(super) fn unstable(what: &str, r: &Reply) -> Unstable {
    Unstable(format!(
        "{what}: unexpected reply {}",
        r.as_text().unwrap_or_else(|| format!("{r:?}"))
    ))
}

pub(super) fn parse_score(t: &str) -> Option<f64> {
    match t {
        "inf" | "+inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        _ => t.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdb::json::score_json;
    use serde_json::json;

    #[test]
    fn scores() {
        assert_eq!(parse_score("inf"), Some(f64::INFINITY));
        assert_eq!(parse_score("-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_score("1e+300"), Some(1e300));
        assert_eq!(score_json(f64::NEG_INFINITY), json!("-inf"));
        assert_eq!(score_json(0.1), json!(0.1));
    }
}
