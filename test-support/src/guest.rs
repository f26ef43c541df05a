//! A test run again inside a qemu guest, under a kernel that has what the
//! host's lacks (fs-verity: the CI machines' kernels are built without
//! it). The guest boots Debian's kernel (`linux-image-amd64`) from /boot
//! with an initramfs made here: busybox, the kernel modules asked for,
//! the test binary itself and the programs it runs, each with its shared
//! libraries. Its init loads the modules, mounts /proc, /sys, /dev and a
//! tmpfs on /tmp, runs the one test and powers off; its console is the
//! test's output. No network and no disk: the test makes what it needs
//! (a loop device on /tmp, say), as it would on the host.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set inside the guest: the test runs its body instead of a guest.
const IN_GUEST: &str = "STRATA_IN_GUEST";
/// What init prints after the test, with its exit status.
const EXIT_MARK: &str = "STRATA-GUEST-EXIT";
/// A guest that has not finished by then is stopped and the test fails.
const TIMEOUT: Duration = Duration::from_secs(600);

/// Whether this process is the test running inside the guest.
pub fn in_guest() -> bool {
    std::env::var_os(IN_GUEST).is_some()
}

/// What the guest gets besides busybox and the test binary.
#[derive(Debug, Default, Clone)]
pub struct Guest {
    /// Kernel config options (`CONFIG_FS_VERITY`) the kernel must have
    /// built in (`=y`).
    pub kernel_config: Vec<&'static str>,
    /// Modules to load, by name, after those they depend on.
    pub modules: Vec<&'static str>,
    /// Programs the test runs (`mkfs.ext4`), found in PATH, copied to the
    /// same path in the guest with their libraries.
    pub programs: Vec<&'static str>,
    /// Files copied as they are (`/etc/mke2fs.conf`).
    pub files: Vec<&'static str>,
}

/// Why no guest could run: the caller skips, or fails under
/// `STRATA_REQUIRE_TOOLS`.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A kernel in /boot with every option asked for, and its modules.
#[derive(Debug)]
struct Kernel {
    image: PathBuf,
    modules: PathBuf,
    release: String,
}

fn find_kernel(options: &[&str]) -> Result<Kernel, Unavailable> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/boot").map_err(|e| Unavailable(format!("/boot: {e}")))? {
        let name = entry.map_err(|e| Unavailable(format!("/boot: {e}")))?.file_name();
        let Some(release) = name.to_str().and_then(|n| n.strip_prefix("vmlinuz-")) else {
            continue;
        };
        let config = std::fs::read_to_string(format!("/boot/config-{release}")).unwrap_or_default();
        let modules = PathBuf::from(format!("/lib/modules/{release}"));
        let has = |o: &&str| config.lines().any(|l| l == format!("{o}=y"));
        if options.iter().all(has) && modules.join("modules.dep").exists() {
            found.push(Kernel {
                image: PathBuf::from(format!("/boot/vmlinuz-{release}")),
                modules,
                release: release.to_owned(),
            });
        }
    }
    // The newest, when several are installed.
    found.sort_by(|a, b| a.release.cmp(&b.release));
    found.pop().ok_or_else(|| {
        Unavailable(format!(
            "no kernel in /boot with {} built in and its modules (apt-get install -y linux-image-amd64)",
            options.join(", ")
        ))
    })
}

/// `names` and the modules they need, dependencies first, as paths under
/// the modules directory.
fn module_order(kernel: &Kernel, names: &[&str]) -> Result<Vec<String>, Unavailable> {
    let dep = std::fs::read_to_string(kernel.modules.join("modules.dep"))
        .map_err(|e| Unavailable(format!("{}: {e}", kernel.modules.display())))?;
    let deps: std::collections::HashMap<&str, Vec<&str>> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m, d.split_whitespace().collect()))
        .collect();
    let by_name = |name: &str| {
        deps.keys()
            .copied()
            .find(|path| {
                let file = path.rsplit('/').next().unwrap_or(path);
                file.strip_suffix(".ko").is_some_and(|n| n.replace('-', "_") == name.replace('-', "_"))
            })
            .ok_or_else(|| Unavailable(format!("kernel {}: no module {name}", kernel.release)))
    };
    fn visit<'d>(
        path: &'d str,
        deps: &std::collections::HashMap<&'d str, Vec<&'d str>>,
        seen: &mut BTreeSet<&'d str>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(path) {
            return;
        }
        // modules.dep lists every module a module needs, so the order
        // comes from visiting them first.
        for d in deps.get(path).into_iter().flatten() {
            visit(d, deps, seen, order);
        }
        order.push(path.to_owned());
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for name in names {
        visit(by_name(name)?, &deps, &mut seen, &mut order);
    }
    Ok(order)
}

/// The shared libraries `program` loads, as `ldd` resolves them.
fn libraries(program: &Path) -> Result<Vec<PathBuf>, Unavailable> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| Unavailable(format!("ldd: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || (!out.status.success() && text.is_empty()) {
        return Ok(Vec::new());
    }
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

fn which(program: &str) -> Result<PathBuf, Unavailable> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| Unavailable(format!("{program} not found")))
}

/// An initramfs in the kernel's "newc" cpio format, uncompressed: each
/// entry a header of hexadecimal fields, the name, the data, each padded
/// to four bytes.
struct Cpio<W: Write> {
    out: W,
    ino: u32,
    dirs: BTreeSet<PathBuf>,
}

impl<W: Write> Cpio<W> {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        self.ino += 1;
        let name = name.trim_start_matches('/');
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(header.len() + name.len() + 1)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> std::io::Result<()> {
        self.out.write_all(&[0u8; 3][..(4 - len % 4) % 4])
    }

    fn dir(&mut self, path: &Path) -> std::io::Result<()> {
        if path == Path::new("/") || path.as_os_str().is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            self.dir(parent)?;
        }
        self.dirs.insert(path.to_owned());
        self.entry(&path.to_string_lossy(), 0o040755, &[])
    }

    /// `from`'s bytes (links followed) at `to`, executable.
    fn file(&mut self, to: &Path, from: &Path) -> std::io::Result<()> {
        if let Some(parent) = to.parent() {
            self.dir(parent)?;
        }
        let data = std::fs::read(from)?;
        self.entry(&to.to_string_lossy(), 0o100755, &data)
    }

    fn finish(mut self) -> std::io::Result<W> {
        self.entry("TRAILER!!!", 0, &[])?;
        Ok(self.out)
    }
}

/// Runs the test `name` of the current test binary inside a guest and
/// returns its console output once it passed; panics, showing that
/// output, when it failed. `Err` when no guest can run here.
pub fn run_test(name: &str, guest: &Guest) -> Result<String, Unavailable> {
    let qemu = which("qemu-system-x86_64").map_err(|e| Unavailable(format!("{e} (apt-get install -y qemu-system-x86)")))?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .map(PathBuf::from)
        .into_iter()
        .find(|p| p.is_file() && libraries(p).is_ok_and(|l| l.is_empty()))
        .ok_or_else(|| Unavailable("no static busybox (apt-get install -y busybox-static)".into()))?;
    let kernel = find_kernel(&guest.kernel_config)?;
    let modules = module_order(&kernel, &guest.modules)?;
    let exe = std::env::current_exe().map_err(|e| Unavailable(format!("the test binary: {e}")))?;

    let dir = tempfile::tempdir().map_err(|e| Unavailable(format!("tempdir: {e}")))?;
    let image = dir.path().join("initramfs.cpio");
    let built = (|| -> std::io::Result<()> {
        let file = std::io::BufWriter::new(std::fs::File::create(&image)?);
        let mut cpio = Cpio {
            out: file,
            ino: 0,
            dirs: BTreeSet::new(),
        };
        for d in ["/dev", "/proc", "/sys", "/tmp", "/run", "/etc", "/root"] {
            cpio.dir(Path::new(d))?;
        }
        cpio.file(Path::new("/bin/busybox"), &busybox)?;
        let mut init = String::from("#!/bin/busybox sh\n/bin/busybox --install -s /bin\n");
        init.push_str("export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root\n");
        init.push_str("mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n");
        init.push_str("mount -t tmpfs tmp /tmp\nmount -t tmpfs run /run\n");
        for m in &modules {
            let inside = format!("/modules/{}", m.rsplit('/').next().unwrap_or(m));
            cpio.file(Path::new(&inside), &kernel.modules.join(m))?;
            init.push_str(&format!("insmod {inside} || echo 'insmod {m} failed'\n"));
        }
        let mut programs = vec![(PathBuf::from("/guest/test"), exe.clone())];
        for p in &guest.programs {
            let path = which(p).map_err(|e| std::io::Error::other(e.0))?;
            programs.push((path.clone(), path));
        }
        let mut libs = BTreeSet::new();
        for (to, from) in &programs {
            cpio.file(to, from)?;
            libs.extend(libraries(from).map_err(|e| std::io::Error::other(e.0))?);
        }
        for lib in &libs {
            cpio.file(lib, lib)?;
        }
        for f in &guest.files {
            cpio.file(Path::new(f), Path::new(f))?;
        }
        // The test sees the variables that shape it on the host.
        let mut env = format!("{IN_GUEST}=1 RUST_BACKTRACE=1");
        for var in ["STRATA_REQUIRE_TOOLS", "STRATA_LOG"] {
            if let Ok(v) = std::env::var(var) {
                env.push_str(&format!(" {var}='{v}'"));
            }
        }
        init.push_str(&format!(
            "cd /tmp\n{env} /guest/test --exact '{name}' --nocapture --test-threads=1\necho \"{EXIT_MARK} $?\"\npoweroff -f\n"
        ));
        cpio.entry("init", 0o100755, init.as_bytes())?;
        cpio.finish()?.flush()
    })();
    built.map_err(|e| Unavailable(format!("making the initramfs: {e}")))?;

    // TCG, not KVM: nested KVM on these machines refuses the host's CPU
    // model, and a boot under TCG takes seconds.
    let mut child = Command::new(&qemu)
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2048"])
        .args(["-nographic", "-no-reboot", "-monitor", "none", "-nic", "none"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(&image)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4 rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Unavailable(format!("{}: {e}", qemu.display())))?;
    let stdout = child.stdout.take().expect("piped");
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            if tx.send(String::from_utf8_lossy(&line).trim_end_matches('\r').to_owned()).is_err() {
                break;
            }
        }
    });
    let mut console = String::new();
    let mut status = None;
    loop {
        let left = TIMEOUT.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(code) = line.strip_prefix(EXIT_MARK) {
                    status = code.trim().parse::<i32>().ok();
                }
                // The boot firmware's screen control bytes say nothing.
                if !line.contains('\u{1b}') {
                    console.push_str(&line);
                    console.push('\n');
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                break;
            }
        }
    }
    let waited = child.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
    let header = format!(
        "--- {name} in a qemu guest (kernel {}, {:.1} s) ---\n",
        kernel.release,
        started.elapsed().as_secs_f64()
    );
    match status {
        Some(0) => Ok(format!("{header}{console}")),
        Some(code) => panic!("{header}{console}--- the test failed in the guest (exit {code})"),
        None => panic!(
            "{header}{console}--- the guest did not finish the test (timed out after {} s or crashed); qemu: {}",
            TIMEOUT.as_secs(),
            waited.unwrap_or_default()
        ),
    }
}

/// What a test does on a host whose kernel lacks what it needs: runs
/// itself in a guest, which must pass, or skips (loudly; a failure under
/// `STRATA_REQUIRE_TOOLS`) when no guest can run here. `why` says what the
/// host lacks.
pub fn run_test_or_skip(name: &str, guest: &Guest, why: &str) {
    assert!(!in_guest(), "{why}, inside the guest too");
    match run_test(name, guest) {
        Ok(console) => eprintln!("{why}: ran in a qemu guest\n{console}"),
        Err(e) if std::env::var_os("STRATA_REQUIRE_TOOLS").is_some() => panic!("{why}, and no guest can run: {e}"),
        Err(e) => eprintln!("SKIPPED: {why}, and no guest can run: {e}"),
    }
}

/// A guest for fs-verity tests: a kernel with it built in, ext4 and loop
/// devices, `mkfs.ext4` and fsverity-utils.
pub fn fs_verity() -> Guest {
    Guest {
        kernel_config: vec!["CONFIG_FS_VERITY"],
        // ext4 finds its checksum through the crypto API, which would
        // ask a modprobe the guest does not have.
        modules: vec!["crc32c_generic", "ext4", "loop"],
        programs: vec!["mkfs.ext4", "fsverity"],
        files: vec!["/etc/mke2fs.conf"],
    }
}
