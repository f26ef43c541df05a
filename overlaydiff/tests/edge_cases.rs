//! Edge cases of the upperdir differ, each on its own: hand-made upperdirs
//! (what overlayfs writes) and real overlay mounts.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::{
    Overlay, applied, can_mount_overlay, is_root, layer_names, open, snapshot, upper_layer,
    walk_layer,
};
use strata_overlaydiff::{Error, LowerView, TarSink, UpperDiffer, XattrNamespace};

fn whiteout(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .expect("mknod 0:0");
}

fn opaque(path: &Path) {
    rustix::fs::setxattr(
        path,
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("opaque xattr");
}

fn dirs(base: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (lower, upper) = (base.join("lower"), base.join("upper"));
    fs::create_dir_all(&lower).expect("lower");
    fs::create_dir_all(&upper).expect("upper");
    (lower, upper)
}

#[test]
fn whiteout_for_a_name_not_in_lower_is_dropped() {
    if !is_root() {
        eprintln!("SKIPPED: whiteout devices need root");
        return;
    }
    let base = tempfile::tempdir().expect("tempdir");
    let (lower, upper) = dirs(base.path());
    fs::write(lower.join("present"), b"x").expect("write");
    whiteout(&upper.join("present"));
    whiteout(&upper.join("never-existed"));
    let names = layer_names(&upper_layer(&lower, &upper));
    assert_eq!(names, vec![".wh.present"]);
}

#[test]
fn opaque_dir_not_in_lower_has_no_marker() {
    if !is_root() {
        eprintln!("SKIPPED: trusted xattrs need root");
        return;
    }
    let base = tempfile::tempdir().expect("tempdir");
    let (lower, upper) = dirs(base.path());
    fs::create_dir_all(lower.join("kept")).expect("mkdir");
    fs::create_dir_all(upper.join("new")).expect("mkdir");
    fs::write(upper.join("new/f"), b"f").expect("write");
    opaque(&upper.join("new"));
    fs::create_dir_all(upper.join("kept")).expect("mkdir");
    opaque(&upper.join("kept"));
    let names = layer_names(&upper_layer(&lower, &upper));
    assert_eq!(names, vec!["kept", "kept/.wh..wh..opq", "new", "new/f"]);
}

#[test]
fn parent_only_dirs_are_left_out() {
    if !can_mount_overlay() {
        return;
    }
    let base = tempfile::tempdir().expect("tempdir");
    let mut ov = Overlay::new(base.path());
    fs::create_dir_all(ov.lower.join("a/b/c")).expect("mkdir");
    fs::write(ov.lower.join("a/b/c/file"), b"old").expect("write");
    ov.mount();
    fs::write(ov.merged.join("a/b/c/file"), b"new content").expect("write");
    ov.unmount();
    assert!(
        ov.upper.join("a/b/c").is_dir(),
        "overlay copied the parents up"
    );
    assert_eq!(
        layer_names(&upper_layer(&ov.lower, &ov.upper)),
        vec!["a/b/c/file"]
    );
    // A parent whose own metadata changed is emitted.
    ov.mount();
    std::os::unix::fs::lchown(ov.merged.join("a/b"), Some(42), Some(42)).expect("chown");
    ov.unmount();
    assert_eq!(
        layer_names(&upper_layer(&ov.lower, &ov.upper)),
        vec!["a/b", "a/b/c/file"]
    );
}

/// Mounts, runs `change` on the merged view, and checks that both differs'
/// layers reproduce it.
fn check_both_differs(setup: impl Fn(&Path), change: impl Fn(&Path)) -> Vec<String> {
    let base = tempfile::tempdir().expect("tempdir");
    let mut ov = Overlay::new(base.path());
    setup(&ov.lower);
    ov.mount();
    change(&ov.merged);
    let merged = snapshot(&ov.merged);
    let walk = walk_layer(&ov.lower, &ov.merged);
    ov.unmount();
    let upper = upper_layer(&ov.lower, &ov.upper);
    assert_eq!(
        snapshot(&applied(base.path(), "u", &ov.lower, &upper)),
        merged,
        "upperdir differ"
    );
    assert_eq!(
        snapshot(&applied(base.path(), "w", &ov.lower, &walk)),
        merged,
        "walking differ"
    );
    layer_names(&upper)
}

#[test]
fn file_replaced_by_a_dir() {
    if !can_mount_overlay() {
        return;
    }
    let names = check_both_differs(
        |lower| fs::write(lower.join("thing"), b"file").expect("write"),
        |merged| {
            fs::remove_file(merged.join("thing")).expect("rm");
            fs::create_dir(merged.join("thing")).expect("mkdir");
            fs::write(merged.join("thing/inside"), b"x").expect("write");
        },
    );
    assert_eq!(names, vec!["thing", "thing/inside"]);
}

#[test]
fn dir_replaced_by_a_file() {
    if !can_mount_overlay() {
        return;
    }
    let names = check_both_differs(
        |lower| {
            fs::create_dir_all(lower.join("thing/sub")).expect("mkdir");
            fs::write(lower.join("thing/sub/f"), b"f").expect("write");
        },
        |merged| {
            fs::remove_dir_all(merged.join("thing")).expect("rm -rf");
            fs::write(merged.join("thing"), b"now a file").expect("write");
        },
    );
    assert_eq!(names, vec!["thing"]);
}

#[test]
fn rm_rf_then_mkdir_makes_an_opaque_dir() {
    if !can_mount_overlay() {
        return;
    }
    let names = check_both_differs(
        |lower| {
            fs::create_dir_all(lower.join("d/old")).expect("mkdir");
            fs::write(lower.join("d/old/f"), b"f").expect("write");
        },
        |merged| {
            fs::remove_dir_all(merged.join("d")).expect("rm -rf");
            fs::create_dir(merged.join("d")).expect("mkdir");
            fs::write(merged.join("d/new"), b"n").expect("write");
        },
    );
    assert_eq!(names, vec!["d", "d/.wh..wh..opq", "d/new"]);
}

#[test]
fn symlink_loop_is_not_followed() {
    if !can_mount_overlay() {
        return;
    }
    check_both_differs(
        |lower| {
            std::os::unix::fs::symlink("b", lower.join("a")).expect("symlink");
            std::os::unix::fs::symlink("a", lower.join("b")).expect("symlink");
        },
        |merged| {
            fs::remove_file(merged.join("a")).expect("rm");
            std::os::unix::fs::symlink("c", merged.join("a")).expect("symlink");
            std::os::unix::fs::symlink("a", merged.join("c")).expect("symlink");
        },
    );
}

#[test]
fn names_with_newlines_and_invalid_utf8() {
    if !can_mount_overlay() {
        return;
    }
    let odd = std::ffi::OsStr::from_bytes(b"line\nbreak \xff\xfe");
    let names = check_both_differs(
        |lower| fs::write(lower.join(odd), b"old").expect("write"),
        |merged| {
            fs::remove_file(merged.join(odd)).expect("rm");
            fs::create_dir(merged.join("dir\nwith newline")).expect("mkdir");
            fs::write(merged.join("dir\nwith newline").join(odd), b"new").expect("write");
        },
    );
    assert!(
        names.contains(&".wh.line\nbreak \u{fffd}\u{fffd}".to_string()),
        "{names:?}"
    );
}

#[test]
fn redirect_and_metacopy_upperdirs_are_refused() {
    if !is_root() {
        eprintln!("SKIPPED: trusted xattrs need root");
        return;
    }
    let base = tempfile::tempdir().expect("tempdir");
    let (lower, upper) = dirs(base.path());
    fs::create_dir(upper.join("moved")).expect("mkdir");
    rustix::fs::setxattr(
        upper.join("moved"),
        "trusted.overlay.redirect",
        b"/orig",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("xattr");
    let view = LowerView::new(vec![open(&lower)], XattrNamespace::Trusted);
    let mut sink = TarSink::new(Vec::new());
    let err = UpperDiffer::new(&open(&upper), &view, XattrNamespace::Trusted)
        .diff(&mut sink)
        .expect_err("refused");
    assert!(matches!(err, Error::NeedsWalk { .. }), "{err}");
    assert!(
        err.to_string().contains("trusted.overlay.redirect"),
        "{err}"
    );
}

#[test]
fn apply_refuses_escaping_names() {
    let base = tempfile::tempdir().expect("tempdir");
    let root = base.path().join("root");
    fs::create_dir(&root).expect("mkdir");
    std::os::unix::fs::symlink(base.path(), root.join("link")).expect("symlink");
    for name in ["../escaped", "link/escaped"] {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        // Written raw: the tar crate itself refuses `..` in append_data.
        h.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, &b"x"[..]).expect("append");
        let tar = b.into_inner().expect("tar");
        let err = strata_overlaydiff::apply_layer(
            &tar[..],
            &open(&root),
            strata_overlaydiff::Whiteouts::Remove,
        )
        .expect_err("refused");
        assert!(matches!(err, Error::UnsafePath { .. }), "{name}: {err}");
        assert!(
            !base.path().join("escaped").exists(),
            "{name}: wrote outside the root"
        );
    }
}

/// Owners and modes come out as the tar says, whether the file was created
/// with them (no chown, no chmod) or needed either: set-group-ID
/// directories give new entries their group, set-ID bits need chmod after
/// chown, modes the umask strips are put back, and a directory made with
/// its mode and owner is left as made.
#[test]
fn extracted_owners_and_modes_are_the_tars() {
    use std::os::unix::fs::MetadataExt;
    if !is_root() {
        eprintln!("SKIPPED: owners other than one's own need root");
        return;
    }
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, kind: tar::EntryType, mode: u32, uid: u64, gid: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_700_000_000);
        let data: &[u8] = if kind == tar::EntryType::Regular { b"content" } else { b"" };
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).expect("append");
    };
    add("sg/", tar::EntryType::Directory, 0o2775, 0, 50);
    add("sg/root-owned", tar::EntryType::Regular, 0o644, 0, 0);
    add("sg/group-50", tar::EntryType::Regular, 0o644, 0, 50);
    add("sg/sub/", tar::EntryType::Directory, 0o755, 0, 0);
    add("sg/sub/f", tar::EntryType::Regular, 0o640, 0, 0);
    add("user", tar::EntryType::Regular, 0o600, 1000, 1001);
    add("plain", tar::EntryType::Regular, 0o644, 0, 0);
    add("read-only", tar::EntryType::Regular, 0o444, 0, 0);
    add("setuid", tar::EntryType::Regular, 0o4755, 1000, 0);
    add("open", tar::EntryType::Regular, 0o666, 0, 0);
    add("sticky/", tar::EntryType::Directory, 0o1777, 0, 0);
    // Directories made with their mode (no chmod), or not.
    add("plain-dir/", tar::EntryType::Directory, 0o755, 0, 0);
    add("group-writable/", tar::EntryType::Directory, 0o775, 0, 0);
    add("users-dir/", tar::EntryType::Directory, 0o750, 1000, 1001);
    add("read-only-dir/", tar::EntryType::Directory, 0o555, 0, 0);
    add("read-only-dir/f", tar::EntryType::Regular, 0o644, 0, 0);
    let tar = b.into_inner().expect("tar");
    let dir = tempfile::tempdir().expect("tempdir");
    strata_overlaydiff::apply_layer(&tar[..], &open(dir.path()), strata_overlaydiff::Whiteouts::Remove).expect("apply");
    for (name, mode, uid, gid) in [
        ("sg", 0o2775, 0, 50),
        ("sg/root-owned", 0o644, 0, 0),
        ("sg/group-50", 0o644, 0, 50),
        ("sg/sub", 0o755, 0, 0),
        ("sg/sub/f", 0o640, 0, 0),
        ("user", 0o600, 1000, 1001),
        ("plain", 0o644, 0, 0),
        ("read-only", 0o444, 0, 0),
        ("setuid", 0o4755, 1000, 0),
        ("open", 0o666, 0, 0),
        ("sticky", 0o1777, 0, 0),
        ("plain-dir", 0o755, 0, 0),
        ("group-writable", 0o775, 0, 0),
        ("users-dir", 0o750, 1000, 1001),
        ("read-only-dir", 0o555, 0, 0),
        ("read-only-dir/f", 0o644, 0, 0),
    ] {
        let m = fs::symlink_metadata(dir.path().join(name)).expect(name);
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (mode, uid, gid), "{name}");
        assert_eq!(m.mtime(), 1_700_000_000, "{name}");
    }
    assert_eq!(fs::read(dir.path().join("read-only")).expect("read"), b"content");
}
