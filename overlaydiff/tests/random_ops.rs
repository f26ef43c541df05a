//! Random operations through a real overlay mount: the layer the upperdir
//! differ makes, applied to the lower, gives exactly the merged view; so does
//! the walking differ's.

mod common;

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use common::{
    Overlay, applied, can_mount_overlay, layer_names, open, snapshot, upper_layer, walk_layer,
};
use strata_overlaydiff::{Whiteouts, XattrNamespace, apply_layer};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Every path below `root` (files, dirs, links), relative.
fn all_paths(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut files, mut dirs) = (Vec::new(), vec![PathBuf::new()]);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(entries) = fs::read_dir(root.join(&rel)) else {
            continue;
        };
        let mut names: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for name in names {
            let p = rel.join(&name);
            match fs::symlink_metadata(root.join(&p)) {
                Ok(m) if m.is_dir() => {
                    dirs.push(p.clone());
                    stack.push(p);
                }
                Ok(_) => files.push(p),
                Err(_) => {}
            }
        }
    }
    (files, dirs)
}

fn name(rng: &mut Rng) -> OsString {
    const NAMES: [&[u8]; 10] = [
        b"a",
        b"b",
        b"conf",
        b"data.bin",
        b"x y",
        b"lib",
        b"\xff\xfe",
        b"new\nline",
        b".hidden",
        b"z",
    ];
    let mut n = NAMES[rng.below(NAMES.len())].to_vec();
    n.extend_from_slice(format!("{}", rng.below(6)).as_bytes());
    OsString::from_vec(n)
}

fn build_lower(root: &Path, rng: &mut Rng) {
    for _ in 0..60 {
        let (files, dirs) = all_paths(root);
        let dir = root.join(&dirs[rng.below(dirs.len())]);
        let path = dir.join(name(rng));
        if fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        match rng.below(10) {
            0..=2 => fs::create_dir(&path).expect("mkdir"),
            3 => std::os::unix::fs::symlink(format!("../target{}", rng.below(3)), &path)
                .expect("symlink"),
            4 if !files.is_empty() => {
                let target = root.join(&files[rng.below(files.len())]);
                if fs::symlink_metadata(&target).is_ok_and(|m| m.is_file()) {
                    let _ = fs::hard_link(&target, &path);
                }
            }
            _ => {
                let size = rng.below(5000);
                fs::write(&path, rng.bytes(size)).expect("write");
                if rng.below(4) == 0 {
                    let _ = rustix::fs::setxattr(
                        &path,
                        "user.lower",
                        b"v",
                        rustix::fs::XattrFlags::empty(),
                    );
                }
            }
        }
    }
}

/// One random operation through the merged mount. Failures that the
/// kernel may legitimately return (EXDEV renames, missing names) are fine.
fn operate(merged: &Path, rng: &mut Rng) {
    let (files, dirs) = all_paths(merged);
    let any_file =
        |rng: &mut Rng| (!files.is_empty()).then(|| merged.join(&files[rng.below(files.len())]));
    let any_dir = |rng: &mut Rng| merged.join(&dirs[rng.below(dirs.len())]);
    match rng.below(14) {
        0 => {
            let size = rng.below(3000);
            let _ = fs::write(any_dir(rng).join(name(rng)), rng.bytes(size));
        }
        1 => {
            if let Some(f) = any_file(rng).filter(|f| f.is_file()) {
                let size = rng.below(2000);
                let _ = fs::write(f, rng.bytes(size));
            }
        }
        2 => {
            if let Some(f) = any_file(rng).filter(|f| f.is_file()) {
                let len = rng.below(1000) as u64;
                let _ = fs::OpenOptions::new()
                    .write(true)
                    .open(f)
                    .and_then(|f| f.set_len(len));
            }
        }
        3 => {
            if let Some(f) = any_file(rng) {
                let _ = fs::remove_file(f);
            }
        }
        4 => {
            if let Some(f) = any_file(rng) {
                let _ = fs::rename(f, any_dir(rng).join(name(rng)));
            }
        }
        5 => {
            use std::os::unix::fs::PermissionsExt;
            if let Some(f) = any_file(rng).filter(|f| !f.is_symlink()) {
                let _ = fs::set_permissions(
                    f,
                    fs::Permissions::from_mode([0o600, 0o755, 0o4755, 0o640][rng.below(4)]),
                );
            }
        }
        6 => {
            let target = if rng.below(2) == 0 {
                any_file(rng)
            } else {
                Some(any_dir(rng))
            };
            if let Some(t) = target.filter(|t| t != merged) {
                let (uid, gid) = (rng.below(3) as u32 * 1000, rng.below(3) as u32 * 1000);
                let _ = std::os::unix::fs::lchown(t, Some(uid), Some(gid));
            }
        }
        7 => {
            let _ = fs::create_dir(any_dir(rng).join(name(rng)));
        }
        8 => {
            // rm -rf a directory, then make it again: an opaque directory.
            let d = any_dir(rng);
            if d != merged && fs::remove_dir_all(&d).is_ok() && rng.below(3) > 0 {
                let _ = fs::create_dir(&d);
                let size = rng.below(100);
                let _ = fs::write(d.join(name(rng)), rng.bytes(size));
            }
        }
        9 => {
            let _ = std::os::unix::fs::symlink(
                format!("t{}", rng.below(9)),
                any_dir(rng).join(name(rng)),
            );
        }
        10 => {
            if let Some(f) = any_file(rng).filter(|f| f.is_file()) {
                let _ = fs::hard_link(f, any_dir(rng).join(name(rng)));
            }
        }
        11 => {
            let target = if rng.below(2) == 0 {
                any_file(rng)
            } else {
                Some(any_dir(rng))
            };
            if let Some(t) = target.filter(|t| !t.is_symlink()) {
                let len = rng.below(20);
                let value = rng.bytes(len);
                let _ = rustix::fs::setxattr(
                    &t,
                    format!("user.k{}", rng.below(3)).as_str(),
                    &value,
                    rustix::fs::XattrFlags::empty(),
                );
            }
        }
        12 => {
            // Replace a file by a directory, or a directory by a file.
            if let Some(f) = any_file(rng) {
                if fs::remove_file(&f).is_ok() {
                    let _ = fs::create_dir(&f);
                }
            } else {
                let d = any_dir(rng);
                if d != merged && fs::remove_dir_all(&d).is_ok() {
                    let _ = fs::write(&d, b"was a dir");
                }
            }
        }
        _ => {
            if let Some(f) = any_file(rng).filter(|f| f.is_file()) {
                let _ = rustix::fs::removexattr(&f, "user.lower");
            }
        }
    }
}

/// What the layers of all seeds contained, so the test cannot pass on
/// layers that exercise nothing.
#[derive(Default, Debug)]
struct Seen {
    whiteouts: usize,
    opaque: usize,
    hardlinks: usize,
    entries: usize,
}

fn count(layer: &[u8], seen: &mut Seen) {
    let mut archive = tar::Archive::new(layer);
    for e in archive.entries().expect("entries") {
        let e = e.expect("entry");
        let path = e.path_bytes().into_owned();
        let base = path.rsplit(|&b| b == b'/').next().unwrap_or_default();
        if base == b".wh..wh..opq" {
            seen.opaque += 1;
        } else if base.starts_with(b".wh.") {
            seen.whiteouts += 1;
        } else if e.header().entry_type() == tar::EntryType::Link {
            seen.hardlinks += 1;
        }
        seen.entries += 1;
    }
}

fn run_seed(seed: u64, seen: &mut Seen) {
    let base = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut ov = Overlay::new(base.path());
    build_lower(&ov.lower, &mut rng);
    let lower_snapshot = snapshot(&ov.lower);
    ov.mount();
    for _ in 0..250 {
        operate(&ov.merged, &mut rng);
    }
    let merged = snapshot(&ov.merged);
    let walk = walk_layer(&ov.lower, &ov.merged);
    ov.unmount();
    let upper = upper_layer(&ov.lower, &ov.upper);
    count(&upper, seen);

    let via_upper = snapshot(&applied(base.path(), "via-upper", &ov.lower, &upper));
    let via_walk = snapshot(&applied(base.path(), "via-walk", &ov.lower, &walk));
    for (what, got) in [
        ("upperdir differ", &via_upper),
        ("walking differ", &via_walk),
    ] {
        if got != &merged {
            let keys: std::collections::BTreeSet<_> = merged.keys().chain(got.keys()).collect();
            let diffs: Vec<String> = keys
                .into_iter()
                .filter(|k| merged.get(*k) != got.get(*k))
                .take(5)
                .map(|k| {
                    format!(
                        "{:?}: merged {:?} / applied {:?}",
                        String::from_utf8_lossy(k),
                        merged.get(k),
                        got.get(k)
                    )
                })
                .collect();
            panic!(
                "seed {seed}: {what} layer applied to the lower differs from the merged view:\n{}",
                diffs.join("\n")
            );
        }
    }

    // The two differs name the same changes: every entry the walking differ
    // writes (whiteouts aside, which the upperdir differ may fold into an
    // opaque marker) is in the upperdir layer, and whatever only the
    // upperdir layer has is a copy-up that changed nothing.
    let plain = |names: Vec<String>| -> std::collections::BTreeSet<String> {
        names
            .into_iter()
            .filter(|n| !n.rsplit('/').next().unwrap_or_default().starts_with(".wh."))
            .collect()
    };
    let (upper_set, walk_set) = (plain(layer_names(&upper)), plain(layer_names(&walk)));
    let only_walk: Vec<_> = walk_set.difference(&upper_set).collect();
    assert!(
        only_walk.is_empty(),
        "seed {seed}: only the walking differ wrote {only_walk:?}"
    );
    for extra in upper_set.difference(&walk_set) {
        let key = extra.as_bytes().to_vec();
        let unchanged =
            lower_snapshot.contains_key(&key) && lower_snapshot.get(&key) == merged.get(&key);
        // Names are compared lossily; a non-UTF-8 name may not map back.
        let lossy = merged
            .keys()
            .any(|k| String::from_utf8_lossy(k) == *extra && k != &key);
        assert!(
            unchanged || lossy,
            "seed {seed}: upperdir differ wrote {extra:?}, which changed but the walking differ missed"
        );
    }

    // Applied onto a fresh upperdir instead (overlay whiteouts), the layer
    // mounts over the lower to the same merged view.
    let fresh = base.path().join("fresh");
    let mut again = Overlay::new(&fresh);
    fs::remove_dir(&again.lower).expect("rmdir");
    std::os::unix::fs::symlink(&ov.lower, &again.lower).expect("symlink lower");
    apply_layer(
        &upper[..],
        &open(&again.upper),
        Whiteouts::Overlay(XattrNamespace::Trusted),
    )
    .expect("apply to upper");
    again.mount();
    assert_eq!(
        snapshot(&again.merged),
        merged,
        "seed {seed}: layer applied to an upperdir mounts to another view"
    );
    again.unmount();
}

#[test]
fn random_operations_over_60_seeds() {
    if !can_mount_overlay() {
        return;
    }
    let mut seen = Seen::default();
    for seed in 1..=60 {
        run_seed(seed, &mut seen);
    }
    eprintln!("upperdir layers over 60 seeds: {seen:?}");
    assert!(
        seen.whiteouts > 50 && seen.opaque > 5 && seen.hardlinks > 5,
        "{seen:?}"
    );
}
