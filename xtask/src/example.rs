//! `cargo xtask example-image`: writes examples/app, the OCI layout the
//! README's first command pulls. Two versions of a small image: a gzip
//! base layer they share and a zstd:chunked app layer in which v2 changes
//! a few files and a few bytes of a library. Deterministic, so the
//! committed blobs can be rebuilt and compared.

use std::io::Write;
use std::path::Path;

use strata_test_support::{LayerBlob, add_image};

type Error = Box<dyn std::error::Error>;

/// Text-like content (it compresses as text does), the same for a seed.
fn text(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 24] = [
        "layer", "store", "chunk", "digest", "mount", "overlay", "image", "config", "manifest", "registry", "range",
        "zstd", "toc", "tar", "split", "pull", "push", "podman", "skopeo", "verity", "file", "byte", "diff", "root",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % WORDS.len() as u64) as usize].as_bytes());
        out.push(if x.is_multiple_of(11) { b'\n' } else { b' ' });
        if x.is_multiple_of(5) {
            out.extend_from_slice(format!("{:x}", x >> 40).as_bytes());
        }
    }
    out.truncate(len);
    out
}

fn tar(files: &[(String, Vec<u8>, u32)]) -> Result<Vec<u8>, Error> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (name, _, _) in files {
        let mut p = Path::new(name).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }
    for d in dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(1_764_000_000);
        b.append_data(&mut h, format!("{}/", d.display()), &[][..])?;
    }
    for (name, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_764_000_000);
        b.append_data(&mut h, name, &data[..])?;
    }
    Ok(b.into_inner()?)
}

fn app_files(version: u32) -> Vec<(String, Vec<u8>, u32)> {
    let changed = [7u64, 23, 24, 51, 66, 79];
    let mut files: Vec<(String, Vec<u8>, u32)> = (0..80u64)
        .map(|i| {
            let seed = if version == 2 && changed.contains(&i) { 10_000 + i } else { i };
            (format!("usr/share/app/doc{i:03}.txt"), text(seed, 2_000 + (i as usize * 3_001) % 30_000), 0o644)
        })
        .collect();
    let mut lib = text(999, 1 << 20);
    if version == 2 {
        lib[600_000..600_200].copy_from_slice(&text(4242, 200));
    }
    files.push(("usr/lib/libapp.so.1".into(), lib, 0o755));
    files.push((
        "etc/app/version".into(),
        format!("app {version}\n").into_bytes(),
        0o644,
    ));
    files
}

pub fn example_image(out: &Path) -> Result<(), Error> {
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    let base_tar = tar(&(0..30u64).map(|i| (format!("etc/base/conf{i:02}"), text(500 + i, 1_500), 0o644)).collect::<Vec<_>>())?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&base_tar)?;
    let base = LayerBlob {
        blob: gz.finish()?,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        annotations: Vec::new(),
        diff_id: strata_test_support::digest(&base_tar),
    };
    for version in [1, 2] {
        let app_tar = tar(&app_files(version))?;
        let mut blob = Vec::new();
        let written = strata_toc::write_zstd_chunked(
            &app_tar[..],
            &mut blob,
            &strata_toc::WriteOptions {
                level: 10,
                legacy_annotations: true,
                ..Default::default()
            },
        )?;
        let app = LayerBlob {
            blob,
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            annotations: written.annotations.into_iter().collect(),
            diff_id: written.diff_id,
        };
        let digest = add_image(out, &format!("v{version}"), &[base.clone(), app]);
        println!("v{version}: manifest {digest}");
    }
    Ok(())
}
