//! The records of `layers.json` and `images.json`, field for field and in
//! containers-storage's order. Keys a newer containers-storage wrote and
//! strata does not know are kept in `extra` and written back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_zero_int(v: &i32) -> bool {
    *v == 0
}

/// One entry of a user-namespace ID map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub container_id: i64,
    pub host_id: i64,
    pub size: i64,
}

/// A layer record (an element of `layers.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "nullable")]
    pub names: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parent: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mountlabel: String,
    /// RFC 3339; written always (Go's omitempty never skips a time).
    #[serde(default = "zero_time")]
    pub created: String,
    #[serde(default, rename = "compressed-diff-digest", skip_serializing_if = "String::is_empty")]
    pub compressed_digest: String,
    #[serde(default, rename = "compressed-size", skip_serializing_if = "is_zero")]
    pub compressed_size: i64,
    #[serde(default, rename = "diff-digest", skip_serializing_if = "String::is_empty")]
    pub diff_digest: String,
    #[serde(default, rename = "toc-digest", skip_serializing_if = "String::is_empty")]
    pub toc_digest: String,
    #[serde(default, rename = "diff-size", skip_serializing_if = "is_zero")]
    pub diff_size: i64,
    #[serde(default, skip_serializing_if = "is_zero_int")]
    pub compression: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "nullable")]
    pub uidset: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "nullable")]
    pub gidset: Vec<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "nullable")]
    pub flags: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "nullable")]
    pub uidmap: Vec<IdMap>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "nullable")]
    pub gidmap: Vec<IdMap>,
    #[serde(default, rename = "big-data-names", skip_serializing_if = "Vec::is_empty", deserialize_with = "nullable")]
    pub big_data_names: Vec<String>,
    /// Keys strata does not know, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The flag that marks a layer being created or deleted.
pub const INCOMPLETE: &str = "incomplete";

impl LayerRecord {
    /// True while the layer is being created or deleted: such a layer does
    /// not exist for readers, and the next writer removes it.
    pub fn incomplete(&self) -> bool {
        self.flags.get(INCOMPLETE) == Some(&Value::Bool(true))
    }

    pub(crate) fn set_incomplete(&mut self, on: bool) {
        if on {
            self.flags.insert(INCOMPLETE.into(), Value::Bool(true));
        } else {
            self.flags.remove(INCOMPLETE);
        }
    }
}

/// An image record (an element of `images.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "nullable")]
    pub names: Vec<String>,
    #[serde(default, rename = "names-history", skip_serializing_if = "Vec::is_empty", deserialize_with = "nullable")]
    pub names_history: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub layer: String,
    #[serde(default, rename = "mapped-layers", skip_serializing_if = "Vec::is_empty", deserialize_with = "nullable")]
    pub mapped_layers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    #[serde(default, rename = "big-data-names", skip_serializing_if = "Vec::is_empty", deserialize_with = "nullable")]
    pub big_data_names: Vec<String>,
    #[serde(default, rename = "big-data-sizes", skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "nullable")]
    pub big_data_sizes: BTreeMap<String, i64>,
    #[serde(default, rename = "big-data-digests", skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "nullable")]
    pub big_data_digests: BTreeMap<String, String>,
    #[serde(default = "zero_time")]
    pub created: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "nullable")]
    pub flags: BTreeMap<String, Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ImageRecord {
    /// The digests the image is found by: `digest` and every manifest's.
    pub fn digests(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.digest.is_empty() {
            out.push(self.digest.clone());
        }
        for name in &self.big_data_names {
            if name.starts_with("manifest")
                && let Some(d) = self.big_data_digests.get(name)
                && !out.contains(d)
            {
                out.push(d.clone());
            }
        }
        out
    }
}

/// A mount count (an element of `mountpoints.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub id: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub count: i64,
}

fn zero_time() -> String {
    "0001-01-01T00:00:00Z".into()
}

/// Go writes nil slices and maps as `null`; read that as empty.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A `sha256:` digest of 64 lowercase hex digits (what the image store
/// insists on when it loads).
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(valid_id)
}

/// 64 lowercase hex digits.
pub fn valid_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODMAN_LAYERS: &str = r#"[{"id":"7147ea4df527897314b788cc59771251058dc09b9f4cbda4bba7da15f9b936a9","created":"2026-11-22T14:52:23.588684855Z","compressed-diff-digest":"sha256:8bf9f2f8859f21658356ff06ce4e2446dcce1e9923676fee14ea2c189b44a9f4","compressed-size":50928707,"diff-digest":"sha256:7147ea4df527897314b788cc59771251058dc09b9f4cbda4bba7da15f9b936a9","diff-size":120678400,"compression":2,"uidset":[0],"gidset":[0,8,42,43,50]},{"id":"3ac1459c64d8abf41b9543e3766a38b6962fe7ada3af1d163803956d7f2e41dd","names":["c1-layer"],"parent":"7147ea4df527897314b788cc59771251058dc09b9f4cbda4bba7da15f9b936a9","created":"2026-11-22T14:53:02.998638896Z"}]"#;

    #[test]
    fn podman_layers_json_round_trips_byte_for_byte() {
        let records: Vec<LayerRecord> = serde_json::from_str(PODMAN_LAYERS).expect("parse");
        assert_eq!(records[1].names, ["c1-layer"]);
        assert_eq!(records[0].gidset, [0, 8, 42, 43, 50]);
        let out = crate::json::to_go_json(&records).expect("json");
        assert_eq!(String::from_utf8(out).expect("utf8"), PODMAN_LAYERS);
    }

    #[test]
    fn unknown_keys_survive_a_rewrite() {
        let input = r#"[{"id":"aa","created":"2026-01-01T00:00:00Z","x-newer":{"k":[1,2]},"flags":{"incomplete":true}}]"#;
        let records: Vec<LayerRecord> = serde_json::from_str(input).expect("parse");
        assert!(records[0].incomplete());
        let out = String::from_utf8(crate::json::to_go_json(&records).expect("json")).expect("utf8");
        assert_eq!(
            out,
            r#"[{"id":"aa","created":"2026-01-01T00:00:00Z","flags":{"incomplete":true},"x-newer":{"k":[1,2]}}]"#
        );
    }

    proptest::proptest! {
        #[test]
        fn records_survive_a_write_and_read(
            id in "[a-f0-9]{64}",
            names in proptest::collection::vec("\\PC{0,12}", 0..3),
            metadata in "\\PC{0,40}",
            size in 0i64..i64::MAX,
            uids in proptest::collection::vec(proptest::num::u32::ANY, 0..4),
            incomplete in proptest::bool::ANY,
        ) {
            let mut record = LayerRecord { id, names, metadata, diff_size: size, uidset: uids, created: zero_time(), ..Default::default() };
            record.set_incomplete(incomplete);
            let bytes = crate::json::to_go_json(&[&record]).expect("json");
            let back: Vec<LayerRecord> = serde_json::from_slice(&bytes).expect("parse");
            proptest::prop_assert_eq!(&back[0], &record);
        }

        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = serde_json::from_slice::<Option<Vec<LayerRecord>>>(&bytes);
            let _ = serde_json::from_slice::<Option<Vec<ImageRecord>>>(&bytes);
        }
    }

    #[test]
    fn nulls_read_as_empty() {
        let input = r#"[{"id":"bb","names":null,"uidset":null,"flags":null,"created":"2026-01-01T00:00:00Z"}]"#;
        let records: Vec<LayerRecord> = serde_json::from_str(input).expect("parse");
        assert!(records[0].names.is_empty() && records[0].flags.is_empty());
    }
}
