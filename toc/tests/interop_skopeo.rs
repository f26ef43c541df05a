//! Blobs written by the reference tool: `skopeo copy --dest-compress-format
//! zstd:chunked` (Debian's skopeo writes the containers-storage 1.43
//! dialect). strata reads the TOC by the manifest's annotations, and it
//! matches the original tar entry by entry.

mod common;

use common::sha;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use strata_toc::{WriteOptions, read_zstd_chunked, write_zstd_chunked};

fn have_skopeo() -> bool {
    let ok = Command::new("skopeo")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("STRATA_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
            panic!("skopeo not installed, and STRATA_REQUIRE_TOOLS=1");
        }
        eprintln!("SKIPPED: skopeo not installed (apt-get install -y skopeo)");
    }
    ok
}

fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha(bytes);
    std::fs::write(layout.join("blobs/sha256").join(&digest[7..]), bytes).expect("blob");
    digest
}

/// An OCI layout holding one image with `layer` as its only layer.
fn oci_layout(dir: &Path, layer: &[u8]) {
    let digest = sha(layer);
    oci_layout_with(
        dir,
        layer,
        "application/vnd.oci.image.layer.v1.tar",
        &digest,
        BTreeMap::new(),
    );
}

fn oci_layout_with(
    dir: &Path,
    layer: &[u8],
    media_type: &str,
    diff_id: &str,
    annotations: BTreeMap<String, String>,
) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("mkdir");
    let layer_digest = put_blob(dir, layer);
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}, "config": {}});
    let config = serde_json::to_vec(&config).expect("json");
    let config_digest = put_blob(dir, &config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": media_type, "digest": layer_digest, "size": layer.len(), "annotations": annotations}],
    });
    let manifest = serde_json::to_vec(&manifest).expect("json");
    let manifest_digest = put_blob(dir, &manifest);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
}

/// Docs of Debian's essential packages, there on every Debian 12 system,
/// whatever else is installed. (The whole of /usr/share/doc depends on the
/// packages installed, and once umoci's docs were among them skopeo 1.9's
/// zstd:chunked writer failed on it with "short write": a skopeo bug.)
const DOCS: [&str; 13] = [
    "base-files", "bash", "coreutils", "diffutils", "dpkg", "findutils", "grep", "gzip", "libc6", "perl-base", "sed", "tar",
    "util-linux",
];

/// A tar of those docs in the given `tar --format`.
fn docs_tar(dir: &Path, format: &str) -> Vec<u8> {
    let path = dir.join("layer.tar");
    let st = Command::new("tar")
        .arg(format!("--format={format}"))
        .arg("-cf")
        .arg(&path)
        .args(["-C", "/usr/share/doc"])
        .args(DOCS)
        .status()
        .expect("tar");
    assert!(st.success());
    std::fs::read(&path).expect("tar")
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")
}

#[test]
fn reads_what_skopeo_writes() {
    if !have_skopeo() {
        return;
    }
    let base = tempfile::tempdir().expect("tempdir");
    let tar = docs_tar(base.path(), "gnu");
    let (src, dst) = (base.path().join("src"), base.path().join("dst"));
    oci_layout(&src, &tar);
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-compress-format", "zstd:chunked"])
        .arg(format!("oci:{}:latest", src.display()))
        .arg(format!("oci:{}:latest", dst.display()))
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let index = read_json(&dst.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"].as_str().expect("digest");
    let manifest = read_json(&dst.join("blobs/sha256").join(&manifest_digest[7..]));
    let layer = &manifest["layers"][0];
    let annotations: BTreeMap<String, String> =
        serde_json::from_value(layer["annotations"].clone()).expect("annotations");
    let blob_digest = layer["digest"].as_str().expect("digest");
    let blob = std::fs::read(dst.join("blobs/sha256").join(&blob_digest[7..])).expect("blob");

    let read = read_zstd_chunked(&blob, Some(&annotations)).expect("strata reads skopeo's blob");
    assert!(read.verified);

    // Entry by entry against the original tar.
    let mut archive = tar::Archive::new(&tar[..]);
    let mut toc_entries = read.toc.entries.iter().filter(|e| e.kind != "chunk");
    let mut files = 0;
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let e = toc_entries
            .next()
            .expect("TOC has an entry for every tar entry");
        assert_eq!(e.name.as_bytes(), &entry.path_bytes()[..]);
        assert_eq!(e.size as u64, entry.header().size().expect("size"));
        assert_eq!(
            e.mode as u32 & 0o7777,
            entry.header().mode().expect("mode") & 0o7777
        );
        let kind = match entry.header().entry_type() {
            tar::EntryType::Regular => "reg",
            tar::EntryType::Directory => "dir",
            tar::EntryType::Symlink => "symlink",
            tar::EntryType::Link => "hardlink",
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(e.kind, kind, "{}", e.name);
        if kind == "reg" && e.size > 0 {
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content).expect("content");
            assert_eq!(e.digest, sha(&content), "{}", e.name);
            // The frames at [offset, endOffset) hold exactly this payload.
            let frames = &blob[e.offset as usize..e.end_offset as usize];
            let mut decoded = Vec::new();
            std::io::Read::read_to_end(
                &mut zstd::stream::read::Decoder::new(frames).expect("decoder"),
                &mut decoded,
            )
            .expect("frames decompress");
            assert_eq!(decoded, content, "{}", e.name);
            files += 1;
        }
    }
    assert!(
        toc_entries.next().is_none(),
        "TOC has entries the tar does not"
    );
    assert!(files > 100, "only {files} files checked");
}

/// The other direction: a blob strata writes, in an OCI layout, is accepted
/// by skopeo, which recompresses it to gzip; the result is the original tar,
/// and plain `zstd -d` gives the original tar too.
#[test]
fn skopeo_and_zstd_accept_what_strata_writes() {
    if !have_skopeo() {
        return;
    }
    let base = tempfile::tempdir().expect("tempdir");
    let tar = docs_tar(base.path(), "pax");
    let mut blob = Vec::new();
    let written = write_zstd_chunked(
        &tar[..],
        &mut blob,
        &WriteOptions {
            legacy_annotations: true,
            ..WriteOptions::default()
        },
    )
    .expect("write");
    assert_eq!(written.diff_id, sha(&tar));

    let blob_path = base.path().join("layer.zst");
    std::fs::write(&blob_path, &blob).expect("blob");
    let plain = Command::new("zstd")
        .arg("-dc")
        .arg(&blob_path)
        .output()
        .expect("zstd");
    assert!(
        plain.status.success(),
        "zstd -d: {}",
        String::from_utf8_lossy(&plain.stderr)
    );
    assert!(
        plain.stdout == tar,
        "zstd -d of strata's blob is the original tar"
    );

    let (src, dst) = (base.path().join("strata"), base.path().join("gzip"));
    oci_layout_with(
        &src,
        &blob,
        "application/vnd.oci.image.layer.v1.tar+zstd",
        &written.diff_id,
        written.annotations.clone(),
    );
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-compress-format", "gzip"])
        .arg(format!("oci:{}:latest", src.display()))
        .arg(format!("oci:{}:latest", dst.display()))
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index = read_json(&dst.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"].as_str().expect("digest");
    let manifest = read_json(&dst.join("blobs/sha256").join(&manifest_digest[7..]));
    let gz_digest = manifest["layers"][0]["digest"].as_str().expect("digest");
    let gz = std::fs::read(dst.join("blobs/sha256").join(&gz_digest[7..])).expect("gzip layer");
    let mut gunzipped = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut gunzipped)
        .expect("gunzip");
    assert!(
        gunzipped == tar,
        "skopeo's recompressed layer is the original tar"
    );
}
