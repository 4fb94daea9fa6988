//! `ksplice-build profile`: the target profile (contracts.md D) from a release's packages, without booting it.
//!
//! A build server has no running host of every release it serves. Everything
//! `ksplice profile` reads from a live host is also in the release's vmlinuz:
//! the GNU build-id note, the ELF machine, the symbol table in the kernel's
//! own kallsyms tables ([`super::kallsyms`]), and `uname -r`/`uname -v` in
//! `linux_banner`, found through that table. The config and `Module.symvers`
//! come from the image and headers packages and are checked before they are
//! copied.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use manifests::profile as layout;

use crate::error::{Error, Result};
use crate::target::identity::{banner, TargetImage};
use crate::target::kallsyms::{self, Addressing};
use crate::target::profile::{check_against_config, config_value};
use crate::target::symbols::SystemMap;

/// A Debian config is ~260 KB and Module.symvers ~2 MB; far larger is not one.
const MAX_CONFIG: u64 = 16 << 20;
const MAX_SYMVERS: u64 = 64 << 20;

/// The release's files.
#[derive(Debug, Clone)]
pub struct ImageInputs {
    /// The vmlinuz (bzImage with an XZ payload) or a vmlinux ELF.
    pub image: PathBuf,
    /// The image package's `/boot/config-<release>`.
    pub config: PathBuf,
    /// The headers package's `Module.symvers`; required when the config has
    /// `CONFIG_MODVERSIONS=y`, as for `ksplice-create`.
    pub symvers: Option<PathBuf>,
}

/// What was written, with the figures worth reporting.
#[derive(Debug)]
pub struct ImageProfile {
    /// Profile file names written into the directory, in order.
    pub files: Vec<&'static str>,
    pub release: String,
    pub build_id: String,
    /// The decoded table the System.map was written from.
    pub table: kallsyms::Kallsyms,
    /// Reading and decompressing the image.
    pub load_time: Duration,
    /// Finding, decoding and checking the kallsyms tables.
    pub decode_time: Duration,
}

/// Write the profile files of the kernel in `inputs.image` into `out`
/// (created if missing), as `ksplice profile DIR` writes them on a host.
/// Everything is checked before the first file is written.
pub fn write_profile(inputs: &ImageInputs, out: &Path) -> Result<ImageProfile> {
    // 1. The image: its build-id note and machine.
    let started = Instant::now();
    let image = TargetImage::load(&inputs.image)?;
    let load_time = started.elapsed();
    let bad = |reason: String| Error::BadImage {
        path: inputs.image.clone(),
        reason,
    };
    let arch = image
        .arch()
        .ok_or_else(|| bad("not an x86-64 vmlinux (the only architecture supported)".into()))?;

    // 2. The config: a kernel config, for this release, with kallsyms.
    let config = read_limited(&inputs.config, MAX_CONFIG)?;
    let config_text = check_config(&inputs.config, &config)?;
    let addressing = addressing(config_text)?;
    if config_value(config_text, "CONFIG_X86_64").as_deref() != Some("y") {
        return Err(Error::Disagree {
            field: "arch",
            first_source: inputs.config.display().to_string(),
            first: "CONFIG_X86_64 not set".into(),
            second_source: format!("{} ELF machine", inputs.image.display()),
            second: arch.into(),
        });
    }

    // 3. The symbol table from the image's kallsyms, cross-checked with the ELF.
    let started = Instant::now();
    let (rodata_addr, rodata) = image
        .section(".rodata")
        .ok_or_else(|| bad("vmlinux has no .rodata section".into()))?;
    let table = kallsyms::decode(
        kallsyms::Section {
            data: rodata,
            addr: rodata_addr,
        },
        addressing,
    )
    .map_err(|source| Error::Kallsyms {
        path: inputs.image.clone(),
        source,
    })?;
    let decode_time = started.elapsed();
    let system_map = table.to_system_map();
    let map = SystemMap::parse(&system_map, &out.join(layout::SYSTEM_MAP))?;
    if map.unique_vmlinux("_text") != Some(image.text_addr) {
        return Err(bad(format!(
            "kallsyms' _text is not the .text section's address {:#x}",
            image.text_addr
        )));
    }

    // 4. `uname -r` and `uname -v` from the `linux_banner` symbol's text: the
    //    first "Linux version" in Debian's image is an earlier copy without the
    //    build number ("# SMP ..." where uname -v says "#1 SMP ...").
    let (release, version) = map
        .unique_vmlinux("linux_banner")
        .and_then(|at| image.c_string_at(at, 1024))
        .and_then(banner)
        .ok_or_else(|| {
            bad("kallsyms' linux_banner is not \"Linux version RELEASE (...) VERSION\"".into())
        })?;
    check_against_config(&release, &version, &inputs.config, config_text)?;

    // 5. Module.symvers: this kernel's exports.
    let symvers = match &inputs.symvers {
        Some(path) => {
            let data = read_limited(path, MAX_SYMVERS)?;
            check_symvers(path, &data, &map)?;
            Some(data)
        }
        None if config_value(config_text, "CONFIG_MODVERSIONS").as_deref() == Some("y") => {
            return Err(Error::Missing {
                what: "Module.symvers",
                hint: "CONFIG_MODVERSIONS=y: give --symvers (the headers package's Module.symvers)"
                    .into(),
            })
        }
        None => None,
    };

    // 6. Write, in the order and with the modes `ksplice profile` uses.
    ensure_dir(out)?;
    let line = |s: &str| format!("{s}\n").into_bytes();
    let mut files: Vec<(&'static str, Vec<u8>)> = vec![
        (layout::SYSTEM_MAP, system_map.into_bytes()),
        (layout::CONFIG, config),
        (layout::BUILD_ID, line(&image.build_id)),
        (layout::RELEASE, line(&release)),
        (layout::VERSION, line(&version)),
        (layout::ARCH, line(arch)),
    ];
    files.extend(symvers.map(|s| (layout::MODULE_SYMVERS, s)));
    let mut written = Vec::new();
    for (name, data) in &files {
        write_atomic(&out.join(name), data, layout::mode(name))?;
        written.push(*name);
    }
    Ok(ImageProfile {
        files: written,
        release,
        build_id: image.build_id,
        table,
        load_time,
        decode_time,
    })
}

/// Read at most `limit` bytes; a larger file is refused, not cut.
pub(crate) fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(Error::io(path))?;
    let mut data = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(Error::io(path))?;
    if data.len() as u64 > limit {
        return Err(Error::Parse {
            path: path.to_path_buf(),
            line: 0,
            reason: format!("larger than {limit} bytes"),
        });
    }
    Ok(data)
}

/// A kernel .config: text, every line a comment or `CONFIG_NAME=value`, with
/// `CONFIG_KALLSYMS=y` (without it the image has no symbol table).
fn check_config<'a>(path: &Path, data: &'a [u8]) -> Result<&'a str> {
    let parse = |line: usize, reason: &str| Error::Parse {
        path: path.to_path_buf(),
        line,
        reason: reason.into(),
    };
    let text = std::str::from_utf8(data).map_err(|_| parse(0, "not UTF-8 text"))?;
    let mut options = 0;
    for (i, l) in text.lines().enumerate() {
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let name = l
            .strip_prefix("CONFIG_")
            .and_then(|r| r.split_once('='))
            .map(|(n, _)| n);
        match name {
            Some(n)
                if !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                options += 1
            }
            _ => return Err(parse(i + 1, "not a kernel config line (CONFIG_NAME=value)")),
        }
    }
    if options == 0 {
        return Err(parse(0, "no CONFIG_ options: not a kernel config"));
    }
    if config_value(text, "CONFIG_KALLSYMS").as_deref() != Some("y") {
        return Err(parse(
            0,
            "CONFIG_KALLSYMS is not set: the image carries no symbol table",
        ));
    }
    Ok(text)
}

/// How kallsyms stores addresses under this config (init/Kconfig).
fn addressing(config: &str) -> Result<Addressing> {
    let on = |key| config_value(config, key).as_deref() == Some("y");
    match (
        on("CONFIG_KALLSYMS_BASE_RELATIVE"),
        on("CONFIG_KALLSYMS_ABSOLUTE_PERCPU"),
    ) {
        (true, true) => Ok(Addressing::RelativeAbsolutePercpu),
        (true, false) => Ok(Addressing::Relative),
        (false, _) => Err(Error::InvalidOption {
            option: "--config",
            reason: "CONFIG_KALLSYMS_BASE_RELATIVE is not set: only base-relative kallsyms tables are supported".into(),
        }),
    }
}

/// Module.symvers lines are `0xCRC<TAB>name<TAB>module<TAB>EXPORT_SYMBOL...`
/// (scripts/mod/modpost.c, `write_dump`); its vmlinux exports must all be in
/// the image's symbol table, or the file belongs to another kernel.
fn check_symvers(path: &Path, data: &[u8], map: &SystemMap) -> Result<()> {
    let parse = |line: usize, reason: String| Error::Parse {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let text = std::str::from_utf8(data).map_err(|_| parse(0, "not UTF-8 text".into()))?;
    let mut vmlinux = 0usize;
    for (i, l) in text.lines().enumerate() {
        let f: Vec<&str> = l.split('\t').collect();
        let crc_ok = f[0]
            .strip_prefix("0x")
            .is_some_and(|h| h.len() == 8 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if f.len() < 4 || !crc_ok || f[1].is_empty() || !f[3].starts_with("EXPORT_SYMBOL") {
            return Err(parse(
                i + 1,
                "expected \"0xCRC<TAB>symbol<TAB>module<TAB>EXPORT_SYMBOL[_GPL]\"".into(),
            ));
        }
        if f[2] == "vmlinux" {
            vmlinux += 1;
            if map.lookup("vmlinux", f[1]).next().is_none() {
                return Err(parse(
                    i + 1,
                    format!("vmlinux export {} is not in the image's kallsyms: the file belongs to another kernel", f[1]),
                ));
            }
        }
    }
    if vmlinux == 0 {
        return Err(parse(
            0,
            "no vmlinux exports: not a kernel's Module.symvers".into(),
        ));
    }
    Ok(())
}

/// Create the profile directory if needed; a symlink in its place is refused
/// (the profile may be written by root into a shared tree).
fn ensure_dir(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other("exists and is not a directory"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(Error::io(dir))
        }
        Err(e) => Err(Error::Io {
            path: dir.to_path_buf(),
            source: e,
        }),
    }
}

/// Replace `path` with `data`, mode `mode`, whole or not at all.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    crate::atomic::write_atomic(path, data, mode)
        .map_err(|(path, source)| Error::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "#\n# Linux/x86 6.1.192 Kernel Configuration\n#\nCONFIG_X86_64=y\nCONFIG_KALLSYMS=y\nCONFIG_KALLSYMS_BASE_RELATIVE=y\nCONFIG_KALLSYMS_ABSOLUTE_PERCPU=y\n# CONFIG_FOO is not set\n\nCONFIG_LOCALVERSION=\"\"\n";

    fn parse_error_line(e: Error) -> usize {
        match e {
            Error::Parse { line, .. } => line,
            other => panic!("expected a parse error, got {other}"),
        }
    }

    #[test]
    fn configs_are_checked() {
        let p = Path::new("config");
        assert!(check_config(p, CONFIG.as_bytes()).is_ok());
        assert_eq!(
            addressing(CONFIG).expect("base-relative"),
            Addressing::RelativeAbsolutePercpu
        );
        let e = check_config(p, b"hello, world\n").expect_err("not a config");
        assert_eq!(parse_error_line(e), 1);
        let e = check_config(p, b"# only comments\n").expect_err("not a config");
        assert_eq!(parse_error_line(e), 0);
        let no_kallsyms = CONFIG.replace("CONFIG_KALLSYMS=y", "# CONFIG_KALLSYMS is not set");
        let e = check_config(p, no_kallsyms.as_bytes()).expect_err("no kallsyms");
        assert!(e.to_string().contains("CONFIG_KALLSYMS is not set"), "{e}");
        let e = check_config(p, b"CONFIG_A=y\n\xff\n").expect_err("binary");
        assert_eq!(parse_error_line(e), 0);
        let absolute = CONFIG.replace("CONFIG_KALLSYMS_BASE_RELATIVE=y", "");
        assert!(matches!(
            addressing(&absolute),
            Err(Error::InvalidOption {
                option: "--config",
                ..
            })
        ));
        let relative = CONFIG.replace("CONFIG_KALLSYMS_ABSOLUTE_PERCPU=y", "");
        assert_eq!(
            addressing(&relative).expect("base-relative"),
            Addressing::Relative
        );
    }

    #[test]
    fn symvers_must_be_this_kernels() {
        let map = SystemMap::parse(
            "ffffffff81000000 T _text\nffffffff81000100 T printk\n",
            Path::new("System.map"),
        )
        .expect("map");
        let p = Path::new("Module.symvers");
        let good = "0x12345678\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n0x0badcafe\txfs_foo\tfs/xfs/xfs\tEXPORT_SYMBOL_GPL\t\n";
        check_symvers(p, good.as_bytes(), &map).expect("good");
        let e = check_symvers(
            p,
            b"0x12345678\tother_export\tvmlinux\tEXPORT_SYMBOL\t\n",
            &map,
        )
        .expect_err("foreign");
        assert!(e.to_string().contains("another kernel"), "{e}");
        for bad in [
            "0x1234\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n",
            "printk 0x12345678 vmlinux\n",
            "0x12345678\tprintk\tvmlinux\tSYMBOL\t\n",
        ] {
            let e = check_symvers(p, bad.as_bytes(), &map).expect_err(bad);
            assert_eq!(parse_error_line(e), 1, "{bad:?}");
        }
        let e = check_symvers(p, b"0x0badcafe\tx\tfs/xfs/xfs\tEXPORT_SYMBOL\t\n", &map)
            .expect_err("no vmlinux lines");
        assert_eq!(parse_error_line(e), 0);
    }

    #[test]
    fn files_are_replaced_with_their_mode_and_no_temporary_left() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("ksplice");
        ensure_dir(&out).expect("created");
        let map = out.join("System.map");
        std::fs::write(&map, "old").expect("write");
        std::fs::set_permissions(&map, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_atomic(&map, b"new", 0o600).expect("written");
        assert_eq!(std::fs::read(&map).expect("read"), b"new");
        let mode = std::fs::metadata(&map).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(&out).expect("list").count(), 1);
        // A symlink where the directory should be is refused, not followed.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&out, &link).expect("symlink");
        assert!(matches!(ensure_dir(&link), Err(Error::Io { .. })));
    }

    #[test]
    fn an_unreadable_image_is_an_io_error_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config");
        std::fs::write(&config, CONFIG).expect("write");
        let out = dir.path().join("ksplice");
        let inputs = ImageInputs {
            image: dir.path().join("vmlinuz"),
            config,
            symvers: None,
        };
        let e = write_profile(&inputs, &out).expect_err("no image");
        assert!(matches!(e, Error::Io { .. }), "{e}");
        std::fs::write(&inputs.image, b"MZ not a kernel").expect("write");
        let e = write_profile(&inputs, &out).expect_err("not an image");
        assert!(matches!(e, Error::BadImage { .. }), "{e}");
        assert!(!out.exists());
    }
}
