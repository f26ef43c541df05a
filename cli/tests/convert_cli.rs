//! `strata convert`: plain and compressed inputs, the descriptor it prints,
//! and refusals.

use std::io::{Read, Write};
use std::process::Command;

fn strata() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strata"))
}

fn layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, len) in [("a", 10usize), ("b/c", 200_000)] {
        let mut h = tar::Header::new_gnu();
        h.set_size(len as u64);
        h.set_mode(0o644);
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        b.append_data(&mut h, name, &data[..]).expect("append");
    }
    b.into_inner().expect("tar")
}

#[test]
fn converts_plain_gzip_and_zstd_layers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tar = layer();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    let inputs = [
        ("plain.tar", tar.clone()),
        ("layer.tar.gz", gz.finish().expect("gzip")),
        (
            "layer.tar.zst",
            zstd::encode_all(&tar[..], 3).expect("zstd"),
        ),
    ];
    for (name, bytes) in inputs {
        let input = dir.path().join(name);
        std::fs::write(&input, bytes).expect("write");
        let output = dir.path().join(format!("{name}.chunked"));
        let out = strata()
            .arg("convert")
            .arg(&input)
            .arg("-o")
            .arg(&output)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let descriptor: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("descriptor JSON");
        assert!(
            descriptor["annotations"]["io.github.containers.zstd-chunked.manifest-checksum"]
                .is_string()
        );
        let blob = std::fs::read(&output).expect("blob");
        assert_eq!(descriptor["size"].as_u64(), Some(blob.len() as u64));
        let mut plain = Vec::new();
        zstd::stream::read::Decoder::new(&blob[..])
            .expect("decoder")
            .read_to_end(&mut plain)
            .expect("decompress");
        assert!(plain == tar, "{name}: the blob decompresses to the layer");
        let inspect = strata()
            .args(["toc", "inspect"])
            .arg(&output)
            .output()
            .expect("run");
        assert!(inspect.status.success());
    }
}

#[test]
fn converts_to_estargz() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tar = layer();
    let input = dir.path().join("plain.tar");
    std::fs::write(&input, &tar).expect("write");
    let output = dir.path().join("layer.estargz");
    let out = strata()
        .args(["convert", "--to", "estargz"])
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let descriptor: serde_json::Value = serde_json::from_slice(&out.stdout).expect("descriptor JSON");
    assert_eq!(descriptor["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    assert!(descriptor["annotations"]["containerd.io/snapshot/stargz/toc.digest"].is_string());
    let blob = std::fs::read(&output).expect("blob");
    assert_eq!(descriptor["size"].as_u64(), Some(blob.len() as u64));
    // Gunzipped, it is the layer's entries, then the TOC entry.
    let mut plain = Vec::new();
    flate2::read::MultiGzDecoder::new(&blob[..]).read_to_end(&mut plain).expect("gunzip");
    let body = tar.len() - 1024;
    assert!(plain[..body] == tar[..body], "the layer's entries, byte for byte");
    let names: Vec<String> = tar::Archive::new(&plain[..])
        .entries()
        .expect("entries")
        .map(|e| e.expect("entry").path().expect("path").display().to_string())
        .collect();
    assert_eq!(names, ["a", "b/c", "stargz.index.json"]);
    let inspect = strata().args(["toc", "inspect"]).arg(&output).output().expect("run");
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
}

#[test]
fn refusals_are_one_line_and_leave_no_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("broken.tar");
    let mut tar = layer();
    tar[600] ^= 0xff; // corrupt the second header's checksum region
    tar.truncate(2000);
    std::fs::write(&input, &tar).expect("write");
    let output = dir.path().join("out");
    let out = strata()
        .arg("convert")
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!output.exists(), "no output after a failure");
    let out = strata()
        .args(["convert", "--to", "nydus"])
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported target format"));
}
