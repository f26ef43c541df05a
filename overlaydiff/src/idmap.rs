//! User-namespace ID maps: the IDs a layer's tar names are stored under
//! others on disk (containers-storage's `remap-uids` / `remap-gids`).

/// `size` IDs from `container` inside the namespace are `host` onward
/// outside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

/// How the owners in a layer's tar become the owners of its files. An
/// empty list maps those IDs to themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMapping {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

impl IdMapping {
    /// The host uid of container uid `id`; `None` outside the map.
    pub fn uid(&self, id: u32) -> Option<u32> {
        map(&self.uids, id)
    }

    /// The host gid of container gid `id`; `None` outside the map.
    pub fn gid(&self, id: u32) -> Option<u32> {
        map(&self.gids, id)
    }

    pub fn is_identity(&self) -> bool {
        self.uids.is_empty() && self.gids.is_empty()
    }
}

fn map(ranges: &[IdRange], id: u32) -> Option<u32> {
    if ranges.is_empty() {
        return Some(id);
    }
    ranges
        .iter()
        .find(|r| id >= r.container && id - r.container < r.size)
        .and_then(|r| r.host.checked_add(id - r.container))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_inside_their_range_only() {
        let m = IdMapping {
            uids: vec![IdRange { container: 0, host: 100_000, size: 65_536 }],
            gids: Vec::new(),
        };
        assert_eq!(m.uid(0), Some(100_000));
        assert_eq!(m.uid(1000), Some(101_000));
        assert_eq!(m.uid(65_535), Some(165_535));
        assert_eq!(m.uid(65_536), None);
        assert_eq!(m.gid(42), Some(42), "no gid map: gids stay");
    }
}
