//! `<runroot>/<driver>-layers/mountpoints.json`: mount counts shared by
//! every process using the store.

use std::path::Path;

use cap_std::fs::Dir;

use crate::records::MountRecord;
use crate::{Error, Result};

pub(crate) fn load(dir: &Dir, dir_path: &Path) -> Result<Vec<MountRecord>> {
    let path = dir_path.join("mountpoints.json");
    let bytes = match dir.read("mountpoints.json") {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&path, e)),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let records: Option<Vec<MountRecord>> = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(records.unwrap_or_default())
}

pub(crate) fn save(dir: &Dir, dir_path: &Path, records: &[MountRecord]) -> Result<()> {
    let live: Vec<&MountRecord> = records.iter().filter(|r| r.count > 0 && !r.path.is_empty()).collect();
    let bytes = crate::json::to_go_json(&live).map_err(|e| Error::io(dir_path, e.into()))?;
    crate::files::write_atomic(dir, "mountpoints.json", &bytes, false)
        .map_err(|e| Error::io(&dir_path.join("mountpoints.json"), e))
}
