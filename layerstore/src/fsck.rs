//! Checking a store against its records, and removing what cannot be
//! trusted.

use std::collections::HashSet;
use std::io;

use crate::export::DiffOptions;
use crate::store::{Problem, Store};
use crate::{Error, Result};

fn problem(subject: String, message: impl Into<String>, removable: bool) -> Problem {
    Problem {
        subject,
        message: message.into(),
        removable,
    }
}

impl Store {
    /// Checks every layer and image record against the disk: the layer
    /// directory exists, the tar-split is present and reassembles (every
    /// file present with the recorded size and CRC), and with `digests`
    /// the reassembled tar hashes to the diffID. Images: the top layer
    /// exists and every big-data file is present with its recorded size.
    /// Problems come back one per subject, in store order.
    pub fn fsck(&self, digests: bool) -> Result<Vec<Problem>> {
        let mut problems = Vec::new();
        let (guard, loaded) = self.layers_read()?;
        let ids: HashSet<&str> = loaded.records.iter().map(|r| r.id.as_str()).collect();
        for layer in &loaded.records {
            let subject = format!("layer {}", layer.id);
            if layer.incomplete() {
                problems.push(problem(subject, "incomplete (a crashed write); the next writer removes it", true));
                continue;
            }
            if crate::check_id(&layer.id).is_err() {
                problems.push(problem(subject, "the ID cannot name a directory", true));
                continue;
            }
            if !layer.parent.is_empty() && !ids.contains(layer.parent.as_str()) {
                problems.push(problem(subject.clone(), format!("parent layer {} is missing", layer.parent), true));
            }
            if !self.backend.exists(&layer.id) {
                problems.push(problem(subject, format!("its {} directory is missing", self.driver.name()), true));
                continue;
            }
            let has_split = self.layers_dir.exists(format!("{}.tar-split.gz", layer.id));
            if !has_split {
                if !layer.diff_digest.is_empty() {
                    problems.push(problem(
                        subject,
                        "tar-split metadata is missing: the original tar cannot be reproduced",
                        false,
                    ));
                }
                continue;
            }
            // diff takes a second shared lock; shared OFD locks coexist.
            let options = DiffOptions {
                compression: None,
                verify: digests,
            };
            match self.diff(&layer.id, io::sink(), options) {
                Ok(size) if layer.diff_size != 0 && size != layer.diff_size as u64 => problems.push(problem(
                    subject,
                    format!("reassembles to {size} bytes, recorded {}", layer.diff_size),
                    true,
                )),
                Ok(_) => {}
                Err(e) => problems.push(problem(subject, format!("does not reassemble: {e}"), true)),
            }
        }
        drop(guard);
        for image in self.images()? {
            let subject = format!("image {}", image.id);
            if !image.layer.is_empty() && self.layer(&image.layer).is_err() {
                problems.push(problem(subject.clone(), format!("top layer {} is missing", image.layer), true));
            }
            for name in &image.big_data_names {
                match self.image_big_data(&image.id, name) {
                    Ok(data) => {
                        if let Some(&size) = image.big_data_sizes.get(name)
                            && size != data.len() as i64
                        {
                            problems.push(problem(
                                subject.clone(),
                                format!("big data {name:?} is {} bytes, recorded {size}", data.len()),
                                true,
                            ));
                        }
                    }
                    Err(e) => problems.push(problem(subject.clone(), format!("big data {name:?}: {e}"), true)),
                }
            }
        }
        for dir in self.backend.list()? {
            if crate::valid_id(&dir) && !ids.contains(dir.as_str()) {
                problems.push(problem(
                    format!("{}/{dir}", self.driver.name()),
                    "a layer directory no record points to",
                    true,
                ));
            }
        }
        Ok(problems)
    }

    /// Removes what `problems` (from [`fsck`](Self::fsck)) marks removable:
    /// broken layers with every layer and image built on them, broken
    /// images, orphaned directories. Returns what was removed.
    pub fn repair(&self, problems: &[Problem]) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        let mut bad_layers: Vec<String> = Vec::new();
        for p in problems.iter().filter(|p| p.removable) {
            if let Some(id) = p.subject.strip_prefix("image ") {
                match self.delete_image(id) {
                    Ok(()) | Err(Error::NotFound(_)) => removed.push(p.subject.clone()),
                    Err(e) => return Err(e),
                }
            } else if let Some(id) = p.subject.strip_prefix("layer ") {
                bad_layers.push(id.to_owned());
            }
        }
        // Everything built on a bad layer goes too, children first.
        let layers = self.layers_write()?.1.records;
        let mut doomed: Vec<String> = Vec::new();
        let mut queue = bad_layers;
        while let Some(id) = queue.pop() {
            if doomed.contains(&id) {
                continue;
            }
            queue.extend(layers.iter().filter(|l| l.parent == id).map(|l| l.id.clone()));
            doomed.push(id);
        }
        for image in self.images()? {
            if doomed.contains(&image.layer) {
                self.delete_image(&image.id)?;
                removed.push(format!("image {}", image.id));
            }
        }
        for id in doomed.iter().rev() {
            match self.force_delete_layer(id) {
                Ok(()) => removed.push(format!("layer {id}")),
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        removed.extend(self.garbage_collect()?);
        Ok(removed)
    }
}
