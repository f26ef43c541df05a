//! The ioctls on real filesystems: tmpfs (no fs-verity) and an ext4 made
//! with `mkfs.ext4 -O verity` on a loop device that this test mounts.
//!
//! Needs root, `mkfs.ext4` and a loop device. Where the kernel is built
//! without `CONFIG_FS_VERITY` (no filesystem can enable verity then), the
//! ext4 test runs in a qemu guest under Debian's kernel, which has it
//! (`strata_test_support::guest`); without a guest, it checks that the
//! host reports `NotSupported` and says clearly that it skipped.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::have_tool;
use strata_test_support::guest;
use strata_fsverity::{Error, Policy, digest, enable, measure};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn sh(cmd: &mut Command) -> bool {
    cmd.status().is_ok_and(|s| s.success())
}

/// What /proc/config.gz says about CONFIG_FS_VERITY, when it says anything.
fn kernel_config_has_fs_verity() -> Option<bool> {
    let out = Command::new("sh")
        .args([
            "-c",
            "zcat /proc/config.gz 2>/dev/null | grep -E '^(# )?CONFIG_FS_VERITY[ =]'",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("CONFIG_FS_VERITY=y") {
        Some(true)
    } else if text.contains("CONFIG_FS_VERITY is not set") {
        Some(false)
    } else {
        None
    }
}

/// A mounted filesystem, unmounted (and its loop device released) on drop.
struct Mount {
    point: PathBuf,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-d").arg(&self.point).status();
    }
}

fn mount(kind: &str, source: &Path, point: &Path, options: &str) -> Option<Mount> {
    std::fs::create_dir_all(point).ok()?;
    let ok = sh(Command::new("mount")
        .args(["-t", kind, "-o", options])
        .arg(source)
        .arg(point));
    ok.then(|| Mount {
        point: point.to_path_buf(),
    })
}

fn write_file(path: &Path, data: &[u8]) {
    let mut f = File::create(path).expect("create");
    f.write_all(data).expect("write");
    f.sync_all().expect("sync");
}

#[test]
fn tmpfs_reports_not_supported() {
    if !is_root() {
        eprintln!("SKIPPED: mounting tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let point = dir.path().join("tmpfs");
    let _mount = mount("tmpfs", Path::new("tmpfs"), &point, "size=16m").expect("mount tmpfs");
    let path = point.join("f");
    write_file(&path, b"hello\n");
    let file = File::open(&path).expect("open");
    let err = enable(&file).expect_err("tmpfs has no fs-verity");
    assert!(err.is_not_supported(), "expected NotSupported, got {err:?}");
    assert!(measure(&file).expect_err("no verity").is_not_supported());
    assert_eq!(
        Policy::IfSupported.apply(&file).expect("skips quietly"),
        None
    );
    assert!(
        Policy::Required
            .apply(&file)
            .expect_err("required")
            .is_not_supported()
    );
    assert_eq!(Policy::Disabled.apply(&file).expect("nothing to do"), None);
    // Here no filesystem has fs-verity: under a kernel that has it, tmpfs
    // must still say NotSupported.
    if kernel_config_has_fs_verity() == Some(false) {
        guest::run_test_or_skip(
            "tmpfs_reports_not_supported",
            &guest::fs_verity(),
            "this kernel is built without CONFIG_FS_VERITY",
        );
    }
}

#[test]
fn ext4_with_verity_on_a_loop_device() {
    if !is_root() {
        eprintln!("SKIPPED: loop mounts need root");
        return;
    }
    if !have_tool("mkfs.ext4", "e2fsprogs") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("verity.img");
    File::create(&image)
        .expect("image")
        .set_len(64 << 20)
        .expect("size");
    assert!(
        sh(Command::new("mkfs.ext4")
            .args(["-q", "-b", "4096", "-O", "verity"])
            .arg(&image)),
        "mkfs.ext4 -O verity"
    );
    let point = dir.path().join("mnt");
    let _mount = mount("ext4", &image, &point, "loop").expect("loop-mount the ext4 image");

    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let path = point.join("f");
    write_file(&path, &data);
    let expected = digest(&data[..]).expect("user-space digest");

    // A writable descriptor open elsewhere blocks enabling.
    let writer = OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open for write");
    let file = File::open(&path).expect("open read-only");
    match enable(&file) {
        Err(Error::NotSupported(cause)) => {
            assert_eq!(
                kernel_config_has_fs_verity(),
                Some(false),
                "ext4 -O verity refused fs-verity ({cause}) but the kernel config does not explain it"
            );
            assert!(measure(&file).expect_err("no verity").is_not_supported());
            assert_eq!(Policy::IfSupported.apply(&file).expect("skips"), None);
            assert!(Policy::Required.apply(&file).is_err());
            // The rest runs again under a kernel that has fs-verity.
            guest::run_test_or_skip(
                "ext4_with_verity_on_a_loop_device",
                &guest::fs_verity(),
                &format!("this kernel is built without CONFIG_FS_VERITY (ext4 -O verity: {cause})"),
            );
            return;
        }
        Err(Error::OpenForWriting) => {}
        other => panic!("enable with a writer open should fail with OpenForWriting, got {other:?}"),
    }
    drop(writer);

    assert!(matches!(measure(&file), Err(Error::NotEnabled)));
    enable(&file).expect("enable");
    enable(&file).expect("enabling twice is not an error");
    assert_eq!(
        measure(&file).expect("measure"),
        expected,
        "kernel and user-space digests differ"
    );
    assert_eq!(
        Policy::Required.apply(&file).expect("required"),
        Some(expected)
    );

    // A verity file cannot be written any more.
    let err = OpenOptions::new()
        .append(true)
        .open(&path)
        .expect_err("verity files are read-only");
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::PERM.raw_os_error()),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).expect("still readable"), data);

    let out = Command::new("fsverity").arg("measure").arg(&path).output();
    if let Some(out) = out.ok().filter(|o| o.status.success()) {
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(&expected.to_string()));
    }
}
