//! `ksplice profile DIR`: what the builder needs from this host, in the
//! layout `ksplice-create` reads from `SRC/ksplice/` (contracts.md D).

use std::fs;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use manifests::profile as layout;

use crate::fsutil::write_atomic;
use crate::host::Host;
use crate::identity::Running;

/// Bounded reads: a kallsyms of a distribution kernel is ~10 MB, a config
/// a few hundred KB.
const MAX_KALLSYMS: u64 = 256 * 1024 * 1024;
const MAX_CONFIG: u64 = 64 * 1024 * 1024;

/// Write the profile into `dir` (created if missing). Returns the file names
/// written, in order.
pub fn profile(host: &Host<'_>, dir: &Path) -> Result<Vec<&'static str>> {
    let running = Running::read(host)?;
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut written = Vec::new();
    // Each file with the mode the layout gives it (System.map 0600: its
    // addresses reveal the running kernel's KASLR offset).
    let mut write = |name: &'static str, data: &[u8]| -> Result<()> {
        write_atomic(&dir.join(name), data, layout::mode(name))?;
        written.push(name);
        Ok(())
    };

    // System.map: /proc/kallsyms shows zero addresses to a reader without
    // CAP_SYSLOG (kptr_restrict); such a map would mislead the builder.
    let kallsyms = host.path("/proc/kallsyms");
    let map = crate::identity::read_bounded(&kallsyms, MAX_KALLSYMS)?;
    let hidden = map
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .all(|l| {
            l.split(|&b| b == b' ')
                .next()
                .is_some_and(|a| a.iter().all(|&c| c == b'0'))
        });
    if hidden {
        return Err(Error::KallsymsHidden { path: kallsyms });
    }
    write(layout::SYSTEM_MAP, &map)?;

    let boot_config = host.path(&format!("/boot/config-{}", running.release));
    let proc_config = host.path("/proc/config.gz");
    let config = if boot_config.is_file() {
        crate::identity::read_bounded(&boot_config, MAX_CONFIG)?
    } else if proc_config.is_file() {
        let f = fs::File::open(&proc_config).map_err(|e| Error::io(&proc_config, e))?;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(f)
            .take(MAX_CONFIG)
            .read_to_end(&mut out)
            .map_err(|e| Error::io(&proc_config, e))?;
        out
    } else {
        return Err(Error::NoKernelConfig {
            tried: vec![boot_config, proc_config],
        });
    };
    write(layout::CONFIG, &config)?;

    for (name, value) in [
        (layout::BUILD_ID, &running.build_id),
        (layout::RELEASE, &running.release),
        (layout::VERSION, &running.version),
        (layout::ARCH, &running.arch),
    ] {
        write(name, format!("{value}\n").as_bytes())?;
    }

    let symvers = host.path(&format!(
        "/usr/src/linux-headers-{}/Module.symvers",
        running.release
    ));
    if symvers.is_file() {
        let data = crate::identity::read_bounded(&symvers, MAX_CONFIG)?;
        write(layout::MODULE_SYMVERS, &data)?;
    }
    Ok(written)
}
