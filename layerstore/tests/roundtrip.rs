//! Both backends: apply then diff gives back the input tar byte for byte
//! (a real root filesystem tar and generated layers), and a 3-layer chain
//! shows the tree GNU tar gives when it extracts the layers in order.

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};
use strata_layerstore::{DiffOptions, Driver, LayerOptions, Store, StoreOptions};
use strata_test_support::tree_snapshot;

fn drivers() -> Vec<Driver> {
    let mut d = vec![Driver::Vfs];
    if strata_layerstore::overlay_supported() {
        d.push(Driver::Overlay);
    } else {
        eprintln!("SKIPPED: overlay backend (needs root and overlayfs); vfs only");
    }
    d
}

fn open(dir: &Path, driver: Driver) -> Store {
    let mut options = StoreOptions::new(dir.join("graph"), dir.join("run"));
    options.driver = Some(driver);
    Store::open(&options).expect("open store")
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn diff(store: &Store, id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    store
        .diff(id, &mut out, DiffOptions { verify: true, ..Default::default() })
        .expect("diff");
    out
}

#[test]
fn a_real_root_filesystem_tar_round_trips() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tar_path = tmp.path().join("rootfs.tar");
    let status = Command::new("tar")
        .args(["--format=gnu", "-C", "/", "-cf"])
        .arg(&tar_path)
        .args(["etc", "usr/share/doc", "usr/lib/python3.11"])
        .status()
        .expect("tar");
    assert!(status.code().is_some_and(|c| c <= 1), "tar failed"); // 1: a file changed while read
    let tar = std::fs::read(&tar_path).expect("read");
    assert!(tar.len() > 100 << 20, "the rootfs tar is only {} bytes", tar.len());
    for driver in drivers() {
        let dir = tmp.path().join(driver.name());
        let store = open(&dir, driver);
        let layer = store
            .put_layer(&LayerOptions::default(), std::fs::File::open(&tar_path).expect("open"))
            .expect("apply");
        assert_eq!(layer.diff_digest, sha(&tar), "{driver:?}");
        assert_eq!(layer.diff_size as usize, tar.len());
        let out = diff(&store, &layer.id);
        assert!(out == tar, "{driver:?}: diff differs from the applied tar");
        assert!(store.fsck(true).expect("fsck").is_empty());
    }
}

fn layer_tar(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, content) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(1000);
        h.set_gid(100);
        if let Some(target) = content.strip_prefix("->") {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            b.append_link(&mut h, name, target).expect("symlink");
        } else if name.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o750);
            h.set_size(0);
            b.append_data(&mut h, name, &[][..]).expect("dir");
        } else {
            h.set_mode(0o640);
            h.set_size(content.len() as u64);
            b.append_data(&mut h, name, content.as_bytes()).expect("file");
        }
    }
    b.into_inner().expect("tar")
}

/// GNU tar's view of applying OCI layers in order: whiteouts done by hand
/// before each layer is extracted.
fn reference(dir: &Path, layers: &[Vec<u8>]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for (i, tar) in layers.iter().enumerate() {
        let mut archive = tar::Archive::new(&tar[..]);
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            let path = entry.path().expect("path").into_owned();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let parent = dir.join(path.parent().unwrap_or(Path::new("")));
            if name == ".wh..wh..opq" {
                for e in std::fs::read_dir(&parent).into_iter().flatten() {
                    let p = e.expect("e").path();
                    if p.is_dir() && !p.is_symlink() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) }.expect("rm");
                }
            } else if let Some(target) = name.strip_prefix(".wh.") {
                let p = parent.join(target);
                let _ = if p.is_dir() && !p.is_symlink() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            }
        }
        let file = dir.with_extension(format!("{i}.tar"));
        std::fs::write(&file, tar).expect("write");
        let status = Command::new("tar")
            .args(["--same-owner", "-p", "--exclude=.wh.*", "-xf"])
            .arg(&file)
            .arg("-C")
            .arg(dir)
            .status()
            .expect("tar");
        assert!(status.success());
    }
}

#[test]
fn a_three_layer_chain_mounts_to_what_gnu_tar_extracts() {
    let layers = vec![
        layer_tar(&[
            ("etc/", ""),
            ("etc/passwd", "root:x:0:0\n"),
            ("etc/hosts", "127.0.0.1 localhost\n"),
            ("usr/", ""),
            ("usr/share/", ""),
            ("usr/share/doc/", ""),
            ("usr/share/doc/a", "a"),
            ("usr/share/doc/b", "b"),
            ("bin/", ""),
            ("bin/sh", "#!shell"),
            ("bin/link", "->sh"),
            ("var/", ""),
            ("var/cache/", ""),
            ("var/cache/x", "cached"),
        ]),
        layer_tar(&[
            ("etc/.wh.hosts", ""),
            ("etc/passwd", "root:x:0:0\nuser:x:1000:100\n"),
            ("usr/share/doc/.wh..wh..opq", ""),
            ("usr/share/doc/c", "c"),
            ("var/.wh.cache", ""),
            ("home/", ""),
            ("home/user/", ""),
            ("home/user/notes", "n1"),
        ]),
        layer_tar(&[
            ("var/cache/", ""),
            ("var/cache/y", "new cache"),
            ("home/user/.wh.notes", ""),
            ("bin/sh", "#!new shell"),
            ("etc/hosts", "restored\n"),
        ]),
    ];
    let tmp = tempfile::tempdir().expect("tempdir");
    let want_dir = tmp.path().join("reference");
    reference(&want_dir, &layers);
    let want = tree_snapshot(&want_dir);
    assert!(want.contains_key("var/cache/y") && !want.contains_key("var/cache/x") && !want.contains_key("usr/share/doc/a"));
    for driver in drivers() {
        let store = open(&tmp.path().join(driver.name()), driver);
        let mut parent = None;
        for tar in &layers {
            let layer = store
                .put_layer(&LayerOptions { parent: parent.clone(), ..Default::default() }, &tar[..])
                .expect("apply");
            assert!(diff(&store, &layer.id) == *tar, "{driver:?}: layer does not round-trip");
            parent = Some(layer.id);
        }
        let top = parent.expect("top");
        let mounted = store.mount(&top, true).expect("mount");
        let got = tree_snapshot(&mounted);
        store.unmount(&top, false).expect("unmount");
        assert_eq!(got, want, "{driver:?}: merged view differs from GNU tar's");
    }
}

/// `sync`: the layer's data is on the device when the apply returns (and
/// not 30 s later, when the kernel would write it back).
#[test]
fn a_synced_apply_is_on_disk_when_it_returns() {
    let Some(fs) = strata_test_support::LoopFs::new("ext4", 256) else {
        return;
    };
    let store = open(&fs.path(), Driver::Vfs);
    let payload = "x".repeat(8 << 20);
    let tar = layer_tar(&[("big", payload.as_str())]);
    let before = fs.written_kib();
    let options = LayerOptions {
        sync: true,
        ..Default::default()
    };
    store.put_layer(&options, &tar[..]).expect("apply");
    let written = fs.written_kib() - before;
    assert!(written >= 8 << 10, "only {written} KiB reached the device");
}

#[test]
fn mounts_are_counted() {
    for driver in drivers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = open(tmp.path(), driver);
        let layer = store.put_layer(&LayerOptions::default(), &layer_tar(&[("f", "x")])[..]).expect("apply");
        let a = store.mount(&layer.id, false).expect("mount");
        let b = store.mount(&layer.id, false).expect("mount again");
        assert_eq!(a, b);
        assert_eq!(store.mounts().expect("mounts")[0].count, 2);
        assert_eq!(store.unmount(&layer.id, false).expect("unmount"), 1);
        assert_eq!(std::fs::read(a.join("f")).expect("still mounted"), b"x");
        assert_eq!(store.unmount(&layer.id, false).expect("unmount"), 0);
        assert!(store.mounts().expect("mounts").is_empty());
        store.mount(&layer.id, false).expect("mount");
        store.delete_layer(&layer.id).expect("delete unmounts first");
        assert!(store.mounts().expect("mounts").is_empty());
        assert!(store.layers().expect("layers").is_empty());
    }
}

/// A deleted layer leaves nothing behind (its tree is moved aside under
/// the lock and deleted after it), and its sibling is untouched.
#[test]
fn a_deleted_layer_leaves_nothing_and_its_sibling_stays() {
    for driver in drivers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = open(tmp.path(), driver);
        let keep_tar = layer_tar(&[("a", "kept")]);
        let keep = store.put_layer(&LayerOptions::default(), &keep_tar[..]).expect("apply");
        let gone = store.put_layer(&LayerOptions::default(), &layer_tar(&[("b", "gone"), ("c/", "")])[..]).expect("apply");
        store.delete_layer(&gone.id).expect("delete");
        assert_eq!(store.layers().expect("layers").len(), 1);
        assert_eq!(diff(&store, &keep.id), keep_tar, "{driver:?}: the sibling diffs to its tar");
        let leftovers = store.garbage_collect().expect("gc");
        assert!(leftovers.is_empty(), "{driver:?}: left behind: {leftovers:?}");
        let graph = tmp.path().join("graph");
        let everything = Command::new("find").arg(&graph).output().expect("find");
        let listing = String::from_utf8_lossy(&everything.stdout);
        assert!(!listing.contains(&gone.id), "{driver:?}: {listing}");
        assert!(!listing.contains(".strata-staging/"), "{driver:?}: a staging directory stayed: {listing}");
    }
}

/// Deleting an image deletes its layers down to the first that another
/// image still uses, and no further (as `podman rmi` does).
#[test]
fn a_deleted_image_takes_only_its_own_layers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path(), Driver::Vfs);
    let base_tar = layer_tar(&[("base", "shared")]);
    let base = store.put_layer(&LayerOptions::default(), &base_tar[..]).expect("apply");
    let on_base = |content: &str| {
        let options = LayerOptions { parent: Some(base.id.clone()), ..LayerOptions::default() };
        store.put_layer(&options, &layer_tar(&[("top", content)])[..]).expect("apply").id
    };
    let (one, two) = (on_base("one"), on_base("two"));
    let image = |name: &str, top: &str| {
        let options = strata_layerstore::ImageOptions {
            names: vec![name.to_owned()],
            top_layer: Some(top.to_owned()),
            ..Default::default()
        };
        store.create_image(&options).expect("image").id
    };
    image("localhost/one:1", &one);
    image("localhost/two:1", &two);
    assert_eq!(store.delete_image_and_layers("localhost/one:1").expect("delete"), vec![one]);
    let left: Vec<String> = store.layers().expect("layers").into_iter().map(|l| l.id).collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&base.id) && left.contains(&two));
    assert_eq!(diff(&store, &base.id), base_tar, "the shared layer is whole");
    let mut deleted = store.delete_image_and_layers("localhost/two:1").expect("delete");
    deleted.sort();
    let mut expected = vec![two, base.id];
    expected.sort();
    assert_eq!(deleted, expected, "the last image takes the shared layer with it");
    assert!(store.layers().expect("layers").is_empty() && store.images().expect("images").is_empty());
    assert!(store.garbage_collect().expect("gc").is_empty());
}

/// A tar with these (path, uid, gid) entries: directories end in `/`.
fn owned_tar(entries: &[(&str, u64, u64)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, uid, gid) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(*uid);
        h.set_gid(*gid);
        h.set_mtime(1_700_000_000);
        if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, path, &[][..]).expect("dir");
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o640);
            h.set_size(3);
            b.append_data(&mut h, path, &b"abc"[..]).expect("file");
        }
    }
    b.into_inner().expect("tar")
}

#[test]
fn layers_are_stored_under_the_stores_id_maps() {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: storing files under other owners needs root");
        return;
    }
    let map = |host| vec![strata_layerstore::IdMap { container_id: 0, host_id: host, size: 65_536 }];
    for driver in drivers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut options = StoreOptions::new(tmp.path().join("graph"), tmp.path().join("run"));
        options.driver = Some(driver);
        options.uid_map = map(100_000);
        options.gid_map = map(200_000);
        let store = Store::open(&options).expect("open");
        let tar = owned_tar(&[("d/", 0, 0), ("d/f", 1000, 50), ("g", 0, 0), ("h/i", 7, 7)]);
        let layer = store.put_layer(&LayerOptions::default(), &tar[..]).expect("apply");
        assert_eq!(layer.uidmap, map(100_000), "{driver:?}: the record keeps the maps");
        assert_eq!(layer.gidmap, map(200_000));
        assert_eq!(layer.uidset, vec![0, 7, 1000], "{driver:?}: the tar's own IDs are recorded");
        let root = match driver {
            Driver::Vfs => tmp.path().join("graph/vfs/dir").join(&layer.id),
            Driver::Overlay => tmp.path().join("graph/overlay").join(&layer.id).join("diff"),
        };
        let owner = |p: &str| {
            let m = std::fs::symlink_metadata(root.join(p)).expect("stat");
            (m.uid(), m.gid())
        };
        assert_eq!(owner("d"), (100_000, 200_000), "{driver:?}");
        assert_eq!(owner("d/f"), (101_000, 200_050), "{driver:?}");
        assert_eq!(owner("h"), (100_000, 200_000), "{driver:?}: a directory the tar implies is the map's root's");
        assert_eq!(owner("h/i"), (100_007, 200_007), "{driver:?}");
        assert_eq!(owner(""), (100_000, 200_000), "{driver:?}: the layer's root");
        assert_eq!(diff(&store, &layer.id), tar, "{driver:?}: the layer diffs to its tar");

        let outside = owned_tar(&[("x", 70_000, 0)]);
        let err = store.put_layer(&LayerOptions::default(), &outside[..]).expect_err("uid outside the map");
        assert!(err.to_string().contains("uid 70000 is outside the layer's ID map"), "{err}");
        assert_eq!(store.layers().expect("layers").len(), 1, "nothing kept");
        drop(store);

        // The same store opened without the maps: no child goes on a
        // layer stored under other IDs.
        let mut plain = StoreOptions::new(tmp.path().join("graph"), tmp.path().join("run"));
        plain.driver = Some(driver);
        let store = Store::open(&plain).expect("open");
        let child = LayerOptions { parent: Some(layer.id.clone()), ..LayerOptions::default() };
        let err = store.put_layer(&child, &owned_tar(&[("y", 0, 0)])[..]).expect_err("other maps");
        assert!(err.to_string().contains("other ID maps"), "{err}");
    }
}

#[test]
fn a_layer_written_by_a_function_equals_the_same_tar_put_and_a_failing_writer_keeps_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let big = "x".repeat(700 << 10); // spans several of the store's buffers
    let tar = layer_tar(&[("etc/", ""), ("etc/big", &big), ("etc/small", "hello\n"), ("lnk", "->etc/small")]);
    for driver in drivers() {
        let store = open(&tmp.path().join(driver.name()), driver);
        // Written in odd-sized pieces, as a tar rebuilt from parts is.
        let from_fn = store
            .put_layer_from(&LayerOptions::default(), |out| {
                for piece in tar.chunks(4093) {
                    out.write_all(piece)?;
                }
                Ok(())
            })
            .expect("put_layer_from");
        let from_reader = store.put_layer(&LayerOptions::default(), &tar[..]).expect("put_layer");
        assert_eq!(from_fn.diff_digest, sha(&tar));
        assert_eq!(from_fn.diff_digest, from_reader.diff_digest);
        assert_eq!(from_fn.diff_size, tar.len() as i64);
        assert_eq!(diff(&store, &from_fn.id), tar, "{driver:?}: the diff is the tar written");

        let before = store.layers().expect("layers").len();
        let err = store
            .put_layer_from(&LayerOptions::default(), |out| {
                out.write_all(&tar[..tar.len() / 2])?;
                Err(std::io::Error::other("the source went away"))
            })
            .expect_err("a failing writer fails the layer");
        assert!(err.to_string().contains("the source went away"), "{err}");
        assert_eq!(store.layers().expect("layers").len(), before, "{driver:?}: a layer was kept");
    }
}

/// A trusted diffID is recorded as given, without a hash of the tar, and
/// flagged; trust without a declared diffID hashes as usual.
#[test]
fn a_trusted_diff_id_is_recorded_unhashed_and_flagged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tar = layer_tar(&[("etc/", ""), ("etc/a", "a\n"), ("etc/b", "bb\n")]);
    let store = open(tmp.path(), Driver::Vfs);
    let write = |out: &mut dyn strata_layerstore::TarOutput| out.write_all(&tar);
    let declared = format!("sha256:{}", "ab".repeat(32));
    let trusted = store
        .put_layer_from(
            &LayerOptions {
                expected_diff_id: Some(declared.clone()),
                trust_expected_diff_id: true,
                ..LayerOptions::default()
            },
            write,
        )
        .expect("trusted");
    assert_eq!(trusted.diff_digest, declared, "recorded as declared, not computed");
    assert_eq!(trusted.diff_size, tar.len() as i64);
    assert_eq!(trusted.flags.get(strata_layerstore::DIFF_ID_UNCHECKED), Some(&serde_json::Value::Bool(true)));
    let on_disk = store.layer(&trusted.id).expect("layer");
    assert_eq!(on_disk.flags, trusted.flags, "the flag is in layers.json");
    let err = store
        .diff(&trusted.id, &mut std::io::sink(), DiffOptions { compression: None, verify: true })
        .expect_err("the export hashes what it writes");
    assert!(err.to_string().contains(&sha(&tar)), "{err}");

    let nothing_declared = store
        .put_layer_from(&LayerOptions { trust_expected_diff_id: true, ..LayerOptions::default() }, write)
        .expect("nothing to trust");
    assert_eq!(nothing_declared.diff_digest, sha(&tar));
    assert!(nothing_declared.flags.is_empty(), "{:?}", nothing_declared.flags);

    let err = store
        .put_layer_from(&LayerOptions { expected_diff_id: Some(declared), ..LayerOptions::default() }, write)
        .expect_err("untrusted, the mismatch fails the layer");
    assert!(err.to_string().contains("diffID"), "{err}");
}

/// Records a count of the files it is told of, and offers it as big data.
struct FileCounter(usize);

impl strata_layerstore::SplitObserver for FileCounter {
    fn segment(&mut self, _: &[u8]) {}

    fn file(&mut self, _: &[u8], _: i64) {
        self.0 += 1;
    }

    fn big_data(&mut self) -> Vec<(String, Vec<u8>)> {
        vec![("files-seen".into(), self.0.to_string().into_bytes())]
    }
}

#[test]
fn cached_big_data_comes_with_the_layer_and_not_with_a_failed_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tar = layer_tar(&[("etc/", ""), ("etc/a", "a\n"), ("etc/b", "bb\n"), ("lnk", "->etc/a")]);
    let store = open(tmp.path(), Driver::Vfs);
    let observer = std::sync::Arc::new(std::sync::Mutex::new(FileCounter(0)));
    let options = LayerOptions {
        cached_big_data: vec![("an-index".into(), b"index bytes".to_vec())],
        split_observer: Some(strata_layerstore::SplitObserverHandle(observer.clone())),
        ..LayerOptions::default()
    };
    let layer = store.put_layer(&options, &tar[..]).expect("put_layer");
    assert_eq!(layer.big_data_names, ["an-index", "files-seen"]);
    assert_eq!(store.layer_big_data(&layer.id, "an-index").expect("index"), b"index bytes");
    // Asked once every entry was seen: the tar-split names all four.
    assert_eq!(store.layer_big_data(&layer.id, "files-seen").expect("seen"), b"4");
    assert_eq!(store.layer(&layer.id).expect("layer").big_data_names, layer.big_data_names);

    // A layer that fails its check keeps no record, and so no big data.
    let failing = LayerOptions {
        expected_diff_id: Some(format!("sha256:{}", "0".repeat(64))),
        ..options
    };
    let before = store.layers().expect("layers").len();
    store.put_layer(&failing, &tar[..]).expect_err("a wrong diffID fails the layer");
    assert_eq!(store.layers().expect("layers").len(), before);
}
