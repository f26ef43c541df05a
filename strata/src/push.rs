//! Pushing a stored image to a registry: the image is exported (layers
//! rebuilt bit for bit and compressed as asked) to a temporary OCI layout,
//! then each blob the repository lacks is uploaded and the manifest put.

use std::path::Path;

use strata_chunkfetch::oci::{self, Manifest};
use strata_chunkfetch::reference::RegistryRef;
use strata_chunkfetch::{Registry, RegistryOptions};
use strata_layerstore::Store;

use crate::{Error, ExportOptions, Result, export_to_layout};

#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    pub registry: RegistryOptions,
    pub export: ExportOptions,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PushReport {
    pub manifest_digest: String,
    pub blobs_uploaded: usize,
    pub blobs_present: usize,
    pub bytes_uploaded: u64,
    pub layers: Vec<crate::ExportedLayer>,
}

/// Pushes image `key` of `store` to `destination`.
pub fn push(store: &Store, key: &str, destination: &RegistryRef, options: &PushOptions) -> Result<PushReport> {
    let staging = tempfile::tempdir().map_err(|e| Error::invalid("a temporary directory", e.to_string()))?;
    let layout = staging.path().join("layout");
    let exported = export_to_layout(store, key, &layout, Some("push"), &options.export)?;
    let manifest_bytes = std::fs::read(blob_path(&layout, &exported.manifest_digest))
        .map_err(|e| Error::invalid("the exported manifest", e.to_string()))?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| Error::invalid("the exported manifest", e.to_string()))?;

    let registry = Registry::new(destination.api_host(), options.registry.clone())?;
    let repository = &destination.repository;
    let mut report = PushReport {
        manifest_digest: exported.manifest_digest.clone(),
        blobs_uploaded: 0,
        blobs_present: 0,
        bytes_uploaded: 0,
        layers: exported.layers,
    };
    for desc in manifest.layers.iter().chain(std::iter::once(&manifest.config)) {
        if registry.has_blob(repository, &desc.digest)? {
            report.blobs_present += 1;
            continue;
        }
        let path = blob_path(&layout, &desc.digest);
        registry.upload_blob(repository, &desc.digest, desc.size, &|| {
            std::fs::File::open(&path).map(|f| Box::new(f) as Box<dyn std::io::Read + Send>)
        })?;
        report.blobs_uploaded += 1;
        report.bytes_uploaded += desc.size;
    }
    let reference = destination
        .tag
        .as_deref()
        .or(destination.digest.as_deref())
        .unwrap_or("latest");
    if let Some(digest) = &destination.digest
        && *digest != exported.manifest_digest
    {
        return Err(Error::invalid(
            format!("destination {destination}"),
            format!("names digest {digest}, the pushed manifest is {}", exported.manifest_digest),
        ));
    }
    registry.put_manifest(repository, reference, oci::MEDIA_TYPE_OCI_MANIFEST, &manifest_bytes)?;
    Ok(report)
}

fn blob_path(layout: &Path, digest: &str) -> std::path::PathBuf {
    layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}
