//! Lookup by ID, name, unique ID prefix and digests, the order
//! containers-storage looks things up in.

use std::collections::HashMap;

use crate::{Error, Result};

/// What the index needs of a record.
pub(crate) trait Keyed {
    fn id(&self) -> &str;
    fn names(&self) -> &[String];
    /// Records that exist for readers (complete layers).
    fn visible(&self) -> bool {
        true
    }
    /// The record's digests by [`DigestKind`] order; empty when unset.
    fn digests(&self) -> [&str; 3] {
        ["", "", ""]
    }
}

/// Which digest of a layer a lookup is by.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DigestKind {
    Compressed = 0,
    Uncompressed = 1,
    Toc = 2,
}

impl Keyed for crate::records::LayerRecord {
    fn id(&self) -> &str {
        &self.id
    }
    fn names(&self) -> &[String] {
        &self.names
    }
    fn visible(&self) -> bool {
        !self.incomplete()
    }
    fn digests(&self) -> [&str; 3] {
        [&self.compressed_digest, &self.diff_digest, &self.toc_digest]
    }
}

impl Keyed for crate::records::ImageRecord {
    fn id(&self) -> &str {
        &self.id
    }
    fn names(&self) -> &[String] {
        &self.names
    }
}

/// Positions of records by ID and name, and the IDs sorted for prefix
/// search. Built once per load.
#[derive(Debug, Default, Clone)]
pub(crate) struct Index {
    by_id: HashMap<String, usize>,
    by_name: HashMap<String, usize>,
    sorted: Vec<(String, usize)>,
    /// Digest → records, one map per [`DigestKind`]; a pull asks these
    /// once per layer, so they must not scan.
    by_digest: [HashMap<String, Vec<usize>>; 3],
}

impl Index {
    pub(crate) fn build<T: Keyed>(records: &[T]) -> Index {
        let mut index = Index::default();
        for (i, r) in records.iter().enumerate() {
            index.by_id.entry(r.id().to_owned()).or_insert(i);
            for n in r.names() {
                index.by_name.insert(n.clone(), i);
            }
            index.sorted.push((r.id().to_owned(), i));
            for (map, digest) in index.by_digest.iter_mut().zip(r.digests()) {
                if !digest.is_empty() {
                    map.entry(digest.to_owned()).or_default().push(i);
                }
            }
        }
        index.sorted.sort();
        index
    }

    /// Visible records with this digest, in record order.
    pub(crate) fn with_digest<T: Keyed>(&self, records: &[T], kind: DigestKind, digest: &str) -> Vec<usize> {
        self.by_digest[kind as usize]
            .get(digest)
            .map(|hits| hits.iter().copied().filter(|&i| records.get(i).is_some_and(Keyed::visible)).collect())
            .unwrap_or_default()
    }

    /// Exact ID, then exact name, then a unique ID prefix. Records that
    /// are not visible (incomplete layers) are never found.
    pub(crate) fn find<T: Keyed>(&self, records: &[T], key: &str, what: &str) -> Result<usize> {
        let visible = |i: &usize| records.get(*i).is_some_and(Keyed::visible);
        if let Some(&i) = self.by_id.get(key).filter(|i| visible(i)) {
            return Ok(i);
        }
        if let Some(&i) = self.by_name.get(key).filter(|i| visible(i)) {
            return Ok(i);
        }
        if key.is_empty() {
            return Err(Error::NotFound(format!("{what} \"\"")));
        }
        let start = self.sorted.partition_point(|(id, _)| id.as_str() < key);
        let mut matches = self.sorted[start..]
            .iter()
            .take_while(|(id, _)| id.starts_with(key))
            .filter(|(_, i)| visible(i));
        match (matches.next(), matches.next()) {
            (Some(&(_, i)), None) => Ok(i),
            (Some(_), Some(_)) => Err(Error::Ambiguous(format!("{what} {key}"))),
            (None, _) => Err(Error::NotFound(format!("{what} {key}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::LayerRecord;

    fn layer(id: &str, names: &[&str]) -> LayerRecord {
        LayerRecord {
            id: id.into(),
            names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn id_then_name_then_unique_prefix() {
        let mut records = vec![layer("abc1", &["x"]), layer("abc2", &["abc1x"]), layer("def", &["abc"])];
        let index = Index::build(&records);
        assert_eq!(index.find(&records, "abc1", "layer").ok(), Some(0));
        assert_eq!(index.find(&records, "abc", "layer").ok(), Some(2), "name before prefix");
        assert_eq!(index.find(&records, "d", "layer").ok(), Some(2));
        assert!(matches!(index.find(&records, "ab", "layer"), Err(Error::Ambiguous(_))));
        assert!(matches!(index.find(&records, "zz", "layer"), Err(Error::NotFound(_))));
        records[0].set_incomplete(true);
        assert_eq!(index.find(&records, "ab", "layer").ok(), Some(1), "incomplete layers are invisible");
    }

    #[test]
    fn digest_lookups_keep_kinds_apart() {
        let mut a = layer("a", &[]);
        a.compressed_digest = "sha256:11".into();
        a.diff_digest = "sha256:11".into();
        let mut b = layer("b", &[]);
        b.diff_digest = "sha256:11".into();
        b.toc_digest = "sha256:22".into();
        let mut records = vec![a, b];
        let index = Index::build(&records);
        assert_eq!(index.with_digest(&records, DigestKind::Compressed, "sha256:11"), [0]);
        assert_eq!(index.with_digest(&records, DigestKind::Uncompressed, "sha256:11"), [0, 1]);
        assert_eq!(index.with_digest(&records, DigestKind::Toc, "sha256:22"), [1]);
        assert!(index.with_digest(&records, DigestKind::Toc, "sha256:11").is_empty());
        records[1].set_incomplete(true);
        assert_eq!(index.with_digest(&records, DigestKind::Uncompressed, "sha256:11"), [0]);
    }
}
