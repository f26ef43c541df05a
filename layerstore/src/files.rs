//! Atomic file replacement, random IDs and big-data file names, as
//! containers-storage does them.

use std::io::{self, Write};

use base64::Engine;
use cap_std::fs::{Dir, OpenOptions, Permissions};
use cap_std::fs::{OpenOptionsExt, PermissionsExt};

/// Replaces `name` in `dir` with `data`: a `.tmp-NAME<random>` file in the
/// same directory, written, `fdatasync`'d unless `volatile`, chmod 0600,
/// renamed over the target. Readers see the old file or the new one, never
/// a mix; a crash leaves at worst a stray temp file.
pub fn write_atomic(dir: &Dir, name: &str, data: &[u8], volatile: bool) -> io::Result<()> {
    let (tmp, mut file) = create_temp(dir, name)?;
    let result = (|| {
        file.write_all(data)?;
        if !volatile {
            file.sync_data()?;
        }
        drop(file);
        dir.set_permissions(&tmp, Permissions::from_mode(0o600))?;
        dir.rename(&tmp, dir, name)
    })();
    if result.is_err() {
        let _ = dir.remove_file(&tmp);
    }
    result
}

/// Replaces several files in `dir`, each as [`write_atomic`] does, synced
/// together: every file's writeback starts before the first is waited for,
/// so a journaling filesystem commits them in one transaction where one
/// after the other would take a commit each. On failure the files already
/// renamed stay replaced.
pub fn write_atomic_all(dir: &Dir, items: &[(&str, &[u8])]) -> io::Result<()> {
    let mut written: Vec<(String, cap_std::fs::File)> = Vec::with_capacity(items.len());
    let result = (|| {
        for (name, data) in items {
            written.push(create_temp(dir, name)?);
            let (_, file) = written.last_mut().expect("just pushed");
            file.write_all(data)?;
            start_writeback(file);
        }
        for (_, file) in &written {
            file.sync_data()?;
        }
        for ((tmp, _), (name, _)) in written.iter().zip(items) {
            dir.set_permissions(tmp, Permissions::from_mode(0o600))?;
            dir.rename(tmp, dir, name)?;
        }
        Ok(())
    })();
    if result.is_err() {
        for (tmp, _) in &written {
            let _ = dir.remove_file(tmp);
        }
    }
    result
}

/// Starts writing `file`'s dirty pages back, without waiting (a hint: a
/// later sync waits and reports errors).
#[allow(unsafe_code)]
fn start_writeback(file: &cap_std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a descriptor `file` keeps open.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// A new temporary file next to `name`, named as Go's `os.CreateTemp` would.
pub fn create_temp(dir: &Dir, name: &str) -> io::Result<(String, cap_std::fs::File)> {
    loop {
        let tmp = format!(".tmp-{name}{}", random_u32()?);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create_new(true).mode(0o600);
        match dir.open_with(&tmp, &options) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

fn random_u32() -> io::Result<u32> {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(io::Error::other)?;
    Ok(u32::from_le_bytes(b))
}

/// A random 64-hex ID. Like containers-storage, it never starts with 12
/// decimal digits (such a prefix could be mistaken for a number).
pub fn random_id() -> io::Result<String> {
    loop {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(io::Error::other)?;
        let id = hex(&b);
        if !id[..12].bytes().all(|c| c.is_ascii_digit()) {
            return Ok(id);
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s
}

/// The file a big-data item is stored in: the key itself when it is made
/// only of `.`, digits and lowercase letters, else `=` + base64 of the key.
pub fn big_data_file_name(key: &str) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    if key.bytes().all(|b| b == b'.' || b.is_ascii_digit() || b.is_ascii_lowercase()) {
        // "." and ".." would name directories, not files.
        if key != "." && key != ".." {
            return Some(key.to_owned());
        }
    }
    Some(format!(
        "={}",
        base64::engine::general_purpose::STANDARD.encode(key)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_data_names_as_containers_storage() {
        assert_eq!(big_data_file_name("manifest").as_deref(), Some("manifest"));
        assert_eq!(
            big_data_file_name("zstd-chunked-manifest").as_deref(),
            Some("=enN0ZC1jaHVua2VkLW1hbmlmZXN0")
        );
        assert!(big_data_file_name("sha256:e8c8").expect("name").starts_with("=c2hhMjU2Om"));
        assert_eq!(big_data_file_name(""), None);
        assert_ne!(big_data_file_name("..").as_deref(), Some(".."));
    }

    #[test]
    fn random_ids_are_64_hex() {
        let id = random_id().expect("id");
        assert!(crate::records::valid_id(&id), "{id}");
        assert_ne!(id, random_id().expect("id"));
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).expect("dir");
        write_atomic(&dir, "layers.json", b"[1]", false).expect("write");
        write_atomic(&dir, "layers.json", b"[2]", true).expect("write");
        assert_eq!(dir.read("layers.json").expect("read"), b"[2]");
        let names: Vec<_> = dir.entries().expect("ls").map(|e| e.expect("e").file_name()).collect();
        assert_eq!(names, ["layers.json"]);
    }

    fn names(dir: &Dir) -> Vec<String> {
        let mut names: Vec<_> = dir
            .entries()
            .expect("ls")
            .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn several_atomic_writes_replace_them_all_and_a_failed_one_leaves_no_temp() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).expect("dir");
        write_atomic(&dir, "manifest", b"old", false).expect("write");
        write_atomic_all(&dir, &[("manifest", b"new"), ("config", b"{}")]).expect("write all");
        assert_eq!(dir.read("manifest").expect("read"), b"new");
        assert_eq!(dir.read("config").expect("read"), b"{}");
        assert_eq!(names(&dir), ["config", "manifest"]);

        // A directory cannot be replaced by a file: the first item is, and
        // no temporary file stays.
        dir.create_dir("taken").expect("mkdir");
        let err = write_atomic_all(&dir, &[("manifest", b"newer"), ("taken", b"x")]).expect_err("a directory in the way");
        assert_ne!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert_eq!(dir.read("manifest").expect("read"), b"newer");
        assert_eq!(names(&dir), ["config", "manifest", "taken"]);
        for (name, mode) in [("manifest", 0o600), ("config", 0o600)] {
            let meta = dir.metadata(name).expect("stat");
            assert_eq!(meta.permissions().mode() & 0o777, mode);
        }
    }
}
