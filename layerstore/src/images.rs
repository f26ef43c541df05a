//! Image records (`images.json`) and image big data (manifests, configs,
//! signatures), kept as containers-storage keeps them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::files::{big_data_file_name, hex, random_id, write_atomic};
use crate::lock::{LockGuard, LockKind};
use crate::records::ImageRecord;
use crate::store::{Loaded, Store, dedup, owned};
use crate::{Error, Result};

/// What a new image is to be.
#[derive(Clone, Debug, Default)]
pub struct ImageOptions {
    /// The ID (for OCI images, the config digest's hex); random when absent.
    pub id: Option<String>,
    /// Normalized references (`localhost/app:v1`); moved from other images.
    pub names: Vec<String>,
    /// The top layer (ID, name or prefix); none for an image without layers.
    pub top_layer: Option<String>,
    pub metadata: Option<String>,
    /// The manifest digest the image is searchable by.
    pub digest: Option<String>,
    /// RFC 3339 creation time (the config's); now when absent.
    pub created: Option<String>,
    /// Big-data items (name, bytes) stored with the new record, as
    /// [`Store::set_image_big_data`] stores them, in the one update of
    /// `images.json` that adds it (containers-storage's `BigData`).
    pub big_data: Vec<(String, Vec<u8>)>,
}

impl Store {
    fn images_lock(&self, kind: LockKind) -> Result<LockGuard> {
        self.lock_at(self.images_path.join("images.lock"), kind)
    }

    fn images_read(&self) -> Result<(LockGuard, Arc<Loaded<ImageRecord>>)> {
        let guard = self.images_lock(LockKind::Shared)?;
        let loaded = self.load(&guard, &self.image_cache, &self.images_dir, &self.images_path, "images.json", None)?;
        Ok((guard, loaded))
    }

    fn images_write(&self) -> Result<(LockGuard, Loaded<ImageRecord>)> {
        self.writable()?;
        let guard = self.images_lock(LockKind::Exclusive)?;
        let loaded = self.load(&guard, &self.image_cache, &self.images_dir, &self.images_path, "images.json", None)?;
        Ok((guard, owned(loaded)))
    }

    fn save_images(&self, guard: &LockGuard, loaded: Loaded<ImageRecord>) -> Result<()> {
        self.save(guard, &self.image_cache, &self.images_dir, &self.images_path, "images.json", None, loaded)
            .map(drop)
    }

    /// The image (if any) whose top layer is `layer`, or a descendant of it.
    pub(crate) fn images_using(&self, layer: &str) -> Result<Option<String>> {
        let (_g, loaded) = self.images_read()?;
        Ok(loaded
            .records
            .iter()
            .find(|i| i.layer == layer || i.mapped_layers.iter().any(|m| m == layer))
            .map(|i| i.id.clone()))
    }

    /// Every image.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.images_read()?.1.records.clone())
    }

    /// An image by ID, name or unique ID prefix.
    pub fn image(&self, key: &str) -> Result<ImageRecord> {
        let (_g, loaded) = self.images_read()?;
        let i = loaded.index.find(&loaded.records, key, "image")?;
        Ok(loaded.records[i].clone())
    }

    /// Images found by a manifest digest: their own, any stored
    /// manifest's (a manifest list's, for an image pulled through one).
    pub fn images_by_digest(&self, digest: &str) -> Result<Vec<ImageRecord>> {
        let (_g, loaded) = self.images_read()?;
        Ok(loaded
            .records
            .iter()
            .filter(|r| r.digests().iter().any(|d| d == digest))
            .cloned()
            .collect())
    }

    /// Records a new image on an existing top layer.
    pub fn create_image(&self, options: &ImageOptions) -> Result<ImageRecord> {
        self.writable()?;
        // Lock order: layers before images.
        let (_layers, layers) = self.layers_read()?;
        let top = match &options.top_layer {
            Some(key) => {
                let i = layers.index.find(&layers.records, key, "layer")?;
                layers.records[i].id.clone()
            }
            None => String::new(),
        };
        let id = match &options.id {
            Some(id) => id.clone(),
            None => random_id().map_err(|e| Error::io(&self.images_path, e))?,
        };
        if !crate::valid_id(&id) {
            return Err(Error::Invalid(format!("image ID {id:?} is not 64 lowercase hex digits")));
        }
        if let Some(d) = &options.digest
            && !crate::valid_digest(d)
        {
            return Err(Error::Invalid(format!("image digest {d:?} is not a sha256 digest")));
        }
        let (guard, mut loaded) = self.images_write()?;
        if loaded.records.iter().any(|r| r.id == id) {
            return Err(Error::Exists(format!("image {id}")));
        }
        let names = dedup(options.names.clone());
        for other in &mut loaded.records {
            other.names.retain(|n| !names.contains(n));
        }
        let mut record = ImageRecord {
            id,
            digest: options.digest.clone().unwrap_or_default(),
            names_history: names.clone(),
            names,
            layer: top,
            metadata: options.metadata.clone().unwrap_or_default(),
            created: options
                .created
                .clone()
                .unwrap_or_else(|| crate::json::rfc3339(SystemTime::now())),
            ..Default::default()
        };
        let files = options
            .big_data
            .iter()
            .map(|(name, data)| {
                note_big_data(&mut record, name, data);
                let file = big_data_file_name(name).ok_or_else(|| Error::Invalid("empty big-data key".into()))?;
                Ok((file, data.as_slice()))
            })
            .collect::<Result<Vec<_>>>()?;
        if !files.is_empty() {
            let dir = self.image_dir(&record.id)?;
            let items: Vec<(&str, &[u8])> = files.iter().map(|(file, data)| (file.as_str(), *data)).collect();
            let dir_path = self.images_path.join(&record.id);
            crate::files::write_atomic_all(&dir, &items).map_err(|e| Error::io(&dir_path, e))?;
        }
        loaded.records.push(record.clone());
        self.save_images(&guard, loaded)?;
        Ok(record)
    }

    /// Deletes an image record and its big data (its layers stay).
    pub fn delete_image(&self, key: &str) -> Result<()> {
        let (_layers, _) = self.layers_read()?;
        let (guard, mut loaded) = self.images_write()?;
        let i = loaded.index.find(&loaded.records, key, "image")?;
        let id = loaded.records.remove(i).id;
        crate::check_id(&id)?;
        self.save_images(&guard, loaded)?;
        match self.images_dir.remove_dir_all(&id) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&self.images_path.join(&id), e)),
        }
    }

    /// Deletes an image, then each of its layers, top first, that no other
    /// image or layer builds on, as `podman rmi` does. Returns the IDs of
    /// the layers deleted. A layer another process starts using meanwhile
    /// stays: [`delete_layer`](Self::delete_layer) checks under the lock.
    pub fn delete_image_and_layers(&self, key: &str) -> Result<Vec<String>> {
        let image = self.image(key)?;
        self.delete_image(&image.id)?;
        let mut deleted = Vec::new();
        let mut next = Some(image.layer).filter(|l| !l.is_empty());
        while let Some(id) = next {
            let parent = self.layer(&id)?.parent;
            match self.delete_layer(&id) {
                Ok(()) => deleted.push(id),
                Err(Error::InUse(_)) => break,
                Err(e) => return Err(e),
            }
            next = Some(parent).filter(|p| !p.is_empty());
        }
        Ok(deleted)
    }

    /// Adds names to an image (in front; a name another image had moves).
    pub fn add_image_names(&self, key: &str, names: &[String]) -> Result<ImageRecord> {
        let (guard, mut loaded) = self.images_write()?;
        let i = loaded.index.find(&loaded.records, key, "image")?;
        for (j, other) in loaded.records.iter_mut().enumerate() {
            if j != i {
                other.names.retain(|n| !names.contains(n));
            }
        }
        let record = &mut loaded.records[i];
        let mut all = names.to_vec();
        all.append(&mut record.names);
        record.names = dedup(all);
        let mut history = names.to_vec();
        history.append(&mut record.names_history);
        record.names_history = dedup(history);
        let record = record.clone();
        self.save_images(&guard, loaded)?;
        Ok(record)
    }

    /// Stores a big-data item of an image atomically and records its size
    /// and digest. Keys starting with `manifest` are found by digest.
    pub fn set_image_big_data(&self, key: &str, name: &str, data: &[u8]) -> Result<()> {
        let (guard, mut loaded) = self.images_write()?;
        let i = loaded.index.find(&loaded.records, key, "image")?;
        if self.write_image_big_data(&mut loaded.records[i], name, data)? {
            self.save_images(&guard, loaded)?;
        }
        Ok(())
    }

    /// Writes a big-data item into the image's directory and notes it in
    /// `record`; returns whether the record changed. The caller holds the
    /// images lock and saves the record.
    fn write_image_big_data(&self, record: &mut ImageRecord, name: &str, data: &[u8]) -> Result<bool> {
        let file = big_data_file_name(name).ok_or_else(|| Error::Invalid("empty big-data key".into()))?;
        let dir = self.image_dir(&record.id)?;
        let path = self.images_path.join(&record.id).join(&file);
        write_atomic(&dir, &file, data, false).map_err(|e| Error::io(&path, e))?;
        Ok(note_big_data(record, name, data))
    }

    /// The directory of image `id`'s big data, made if missing.
    fn image_dir(&self, id: &str) -> Result<cap_std::fs::Dir> {
        crate::check_id(id)?;
        let dir_path = self.images_path.join(id);
        crate::mkdir_mode(&dir_path, 0o700)?;
        self.images_dir.open_dir(id).map_err(|e| Error::io(&dir_path, e))
    }

    /// An image's big-data item.
    pub fn image_big_data(&self, key: &str, name: &str) -> Result<Vec<u8>> {
        let image = self.image(key)?;
        if !image.big_data_names.iter().any(|n| n == name) {
            return Err(Error::NotFound(format!("big data {name:?} of image {}", image.id)));
        }
        let file = big_data_file_name(name).ok_or_else(|| Error::Invalid("empty big-data key".into()))?;
        let path = self.images_path.join(&image.id).join(&file);
        let data = self
            .images_dir
            .open_dir(&image.id)
            .and_then(|d| d.read(&file))
            .map_err(|e| Error::io(&path, e))?;
        if let Some(want) = image.big_data_digests.get(name) {
            let got = format!("sha256:{}", hex(&Sha256::digest(&data)));
            if *want != got && !name.starts_with("manifest") {
                return Err(Error::DigestMismatch {
                    what: path.display().to_string(),
                    expected: want.clone(),
                    actual: got,
                });
            }
        }
        Ok(data)
    }

    /// The big-data keys of an image, in the order they were added.
    pub fn image_big_data_names(&self, key: &str) -> Result<Vec<String>> {
        Ok(self.image(key)?.big_data_names)
    }

    /// The recorded size of an image's big-data item.
    pub fn image_big_data_size(&self, key: &str, name: &str) -> Result<i64> {
        let image = self.image(key)?;
        image
            .big_data_sizes
            .get(name)
            .copied()
            .ok_or_else(|| Error::NotFound(format!("big data {name:?} of image {}", image.id)))
    }

    /// The layer IDs of an image, top first.
    pub fn image_layers(&self, key: &str) -> Result<Vec<String>> {
        let image = self.image(key)?;
        let layers = self.layers()?;
        let mut chain = Vec::new();
        let mut seen = HashSet::new();
        let mut next = image.layer.clone();
        while !next.is_empty() {
            if !seen.insert(next.clone()) {
                return Err(Error::Corrupt {
                    what: format!("layer {next}"),
                    reason: "the parent chain loops".into(),
                });
            }
            let layer = layers
                .iter()
                .find(|l| l.id == next)
                .ok_or_else(|| Error::NotFound(format!("layer {next} of image {}", image.id)))?;
            chain.push(layer.id.clone());
            next = layer.parent.clone();
        }
        Ok(chain)
    }
}

/// Notes big-data item `name` holding `data` in `record`: its size and
/// digest, and the image's digest if it has none and this is a manifest.
/// Returns whether the record changed.
fn note_big_data(record: &mut ImageRecord, name: &str, data: &[u8]) -> bool {
    let digest = format!("sha256:{}", hex(&Sha256::digest(data)));
    let size = data.len() as i64;
    let changed = record.big_data_sizes.get(name) != Some(&size)
        || record.big_data_digests.get(name) != Some(&digest)
        || !record.big_data_names.iter().any(|n| n == name);
    record.big_data_sizes.insert(name.to_owned(), size);
    record.big_data_digests.insert(name.to_owned(), digest.clone());
    if !record.big_data_names.iter().any(|n| n == name) {
        record.big_data_names.push(name.to_owned());
    }
    if record.digest.is_empty() && name.starts_with("manifest") {
        record.digest = digest;
    }
    changed
}
