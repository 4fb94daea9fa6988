//! `/etc/ksplice/client.toml`: where a host fetches updates from and which
//! of them it applies (docs/fleet.md, "Hosts").

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::host::Host;

/// Default configuration file, relative to the host root.
pub const DEFAULT_CONFIG: &str = "etc/ksplice/client.toml";
/// Default trusted TUF root, an absolute host path (resolved under the root).
pub const DEFAULT_ROOT: &str = "/etc/ksplice/root.json";
/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;
/// Largest trusted root read (tough's own limit for a downloaded root).
pub const MAX_ROOT_BYTES: u64 = 1024 * 1024;

/// The file as written; [`Config`] is the checked form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    mirrors: Vec<String>,
    root: Option<PathBuf>,
    channel: Option<String>,
    delay: Option<String>,
    pin: Option<u32>,
    #[serde(default)]
    auto: bool,
    proxy: Option<String>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    timeouts: RawTimeouts,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect: Option<String>,
    read: Option<String>,
    total: Option<String>,
}

/// Which proxy HTTP requests go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proxy {
    /// `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` and `NO_PROXY` from the environment.
    FromEnv,
    /// The configured proxy URL, for every mirror.
    Url(String),
}

/// Network time limits; a stalled mirror costs at most these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetTimeouts {
    /// TCP (and TLS) connection set-up.
    pub connect: Duration,
    /// Each read from the socket.
    pub read: Duration,
    /// One whole request, body included.
    pub total: Duration,
}

impl Default for NetTimeouts {
    fn default() -> Self {
        NetTimeouts {
            connect: Duration::from_secs(15),
            read: Duration::from_secs(30),
            total: Duration::from_secs(300),
        }
    }
}

/// The checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Tried in order; the next one after any failure.
    pub mirrors: Vec<Url>,
    /// The trusted TUF root.json (installed once, out of band).
    pub root: PathBuf,
    pub channel: String,
    /// Apply only targets published at least this long ago.
    pub delay: Duration,
    /// Highest stream level to apply.
    pub pin: Option<u32>,
    /// Whether the timer's `ksplice update --timer` applies anything.
    pub auto: bool,
    pub proxy: Proxy,
    /// PEM roots for https mirrors; the system bundle when unset.
    pub ca_file: Option<PathBuf>,
    pub timeouts: NetTimeouts,
}

fn invalid(path: &Path, field: &'static str, reason: String) -> Error {
    Error::ConfigInvalid {
        path: path.to_owned(),
        field,
        reason,
    }
}

/// Parses `90s`, `15m`, `36h`, `2d`, `1d12h` or `0`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return None,
        };
        let n: u64 = digits.parse().ok()?;
        digits.clear();
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    if !digits.is_empty() || text.is_empty() {
        return None;
    }
    Some(Duration::from_secs(total))
}

impl Config {
    /// Reads and checks the configuration at `path`; it and its directory
    /// must pass the same ownership and mode rules as the trust policy
    /// (whoever can write it chooses the mirrors and the root).
    pub fn load(host: &Host<'_>, path: &Path) -> Result<Config> {
        check_trusted_file(path)?;
        let text = read_capped(path, MAX_CONFIG_BYTES)?;
        let text = String::from_utf8(text)
            .map_err(|_| invalid(path, "file", "is not UTF-8".to_owned()))?;
        Self::parse(host, path, &text)
    }

    /// [`Config::load`] of text already read (`path` names it in errors).
    pub fn parse(host: &Host<'_>, path: &Path, text: &str) -> Result<Config> {
        let raw: Raw = toml::from_str(text).map_err(|source| Error::ConfigParse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        if raw.mirrors.is_empty() {
            return Err(invalid(path, "mirrors", "names no mirror".to_owned()));
        }
        let mut mirrors = Vec::new();
        for m in &raw.mirrors {
            // A base URL must end in '/', or joining `metadata/` would
            // replace its last segment.
            let with_slash = if m.ends_with('/') {
                m.clone()
            } else {
                format!("{m}/")
            };
            let url = Url::parse(&with_slash)
                .map_err(|e| invalid(path, "mirrors", format!("{m:?}: {e}")))?;
            if !matches!(url.scheme(), "https" | "http" | "file") {
                return Err(invalid(
                    path,
                    "mirrors",
                    format!("{m:?}: only https://, http:// and file:// mirrors are supported"),
                ));
            }
            mirrors.push(url);
        }
        let channel = raw
            .channel
            .unwrap_or_else(|| manifests::fleet::DEFAULT_CHANNEL.to_owned());
        manifests::manifest::check_id(&channel).map_err(|_| {
            invalid(
                path,
                "channel",
                format!("{channel:?} must look like an update id"),
            )
        })?;
        let duration = |field: &'static str, v: Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => parse_duration(&s).ok_or_else(|| {
                invalid(
                    path,
                    field,
                    format!("{s:?} is not a duration like 90s, 15m, 36h or 2d"),
                )
            }),
        };
        let delay = duration("delay", raw.delay, Duration::ZERO)?;
        let d = NetTimeouts::default();
        let timeouts = NetTimeouts {
            connect: duration("timeouts.connect", raw.timeouts.connect, d.connect)?,
            read: duration("timeouts.read", raw.timeouts.read, d.read)?,
            total: duration("timeouts.total", raw.timeouts.total, d.total)?,
        };
        if [timeouts.connect, timeouts.read, timeouts.total].contains(&Duration::ZERO) {
            return Err(invalid(path, "timeouts", "must not be 0".to_owned()));
        }
        if raw.pin == Some(0) {
            return Err(invalid(path, "pin", "levels start at 1".to_owned()));
        }
        let proxy = match raw.proxy {
            None => Proxy::FromEnv,
            Some(p) => {
                ureq::Proxy::new(&p).map_err(|e| invalid(path, "proxy", format!("{p:?}: {e}")))?;
                Proxy::Url(p)
            }
        };
        // Paths in the file are host paths: under the fixture root in tests.
        let host_path = |p: &Path| host.path(&p.to_string_lossy());
        Ok(Config {
            mirrors,
            root: host_path(raw.root.as_deref().unwrap_or(Path::new(DEFAULT_ROOT))),
            channel,
            delay,
            pin: raw.pin,
            auto: raw.auto,
            proxy,
            ca_file: raw.ca_file.as_deref().map(host_path),
            timeouts,
        })
    }

    /// The trusted root's bytes; owner and mode checked like the config.
    pub fn read_root(&self) -> Result<Vec<u8>> {
        check_trusted_file(&self.root)?;
        read_capped(&self.root, MAX_ROOT_BYTES)
    }
}

/// The file and its directory must belong to us or root and not be group
/// or world writable (as for trust.toml).
pub(crate) fn check_trusted_file(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fsutil::check_trusted(dir)?;
    fsutil::check_trusted(path)
}

/// Read a regular file, not through a symlink, refusing more than `max` bytes.
pub(crate) fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    if buf.len() as u64 > max {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("larger than {max} bytes"),
            ),
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::RealSys;

    fn parse(text: &str) -> Result<Config> {
        let sys = RealSys;
        let host = Host::new("/fx", &sys);
        Config::parse(&host, Path::new("client.toml"), text)
    }

    #[test]
    fn defaults_and_full_file() {
        let c = parse(r#"mirrors = ["https://m.example/ksplice"]"#).expect("minimal");
        assert_eq!(c.mirrors[0].as_str(), "https://m.example/ksplice/");
        assert_eq!(c.root, PathBuf::from("/fx/etc/ksplice/root.json"));
        assert_eq!(c.channel, "stable");
        assert_eq!(c.delay, Duration::ZERO);
        assert_eq!(c.pin, None);
        assert!(!c.auto);
        assert_eq!(c.proxy, Proxy::FromEnv);
        assert_eq!(c.timeouts, NetTimeouts::default());
        let c = parse(
            r#"
mirrors = ["file:///srv/repo", "http://127.0.0.1:8080/"]
root = "/etc/ksplice/fleet-root.json"
channel = "testing"
delay = "1d12h"
pin = 3
auto = true
proxy = "http://proxy.example:3128"
ca_file = "/etc/ksplice/ca.pem"
[timeouts]
connect = "5s"
read = "10s"
total = "2m"
"#,
        )
        .expect("full");
        assert_eq!(c.mirrors.len(), 2);
        assert_eq!(c.root, PathBuf::from("/fx/etc/ksplice/fleet-root.json"));
        assert_eq!(c.delay, Duration::from_secs(36 * 3600));
        assert_eq!(c.pin, Some(3));
        assert!(c.auto);
        assert_eq!(c.proxy, Proxy::Url("http://proxy.example:3128".into()));
        assert_eq!(c.ca_file, Some(PathBuf::from("/fx/etc/ksplice/ca.pem")));
        assert_eq!(c.timeouts.total, Duration::from_secs(120));
    }

    #[test]
    fn bad_files_are_refused_with_the_field_named() {
        for (text, field) in [
            ("mirrors = []", "mirrors"),
            (r#"mirrors = ["ftp://x/"]"#, "mirrors"),
            (
                r#"mirrors = ["https://x/"]
channel = "Stable!""#,
                "channel",
            ),
            (
                r#"mirrors = ["https://x/"]
delay = "soon""#,
                "delay",
            ),
            (
                r#"mirrors = ["https://x/"]
pin = 0"#,
                "pin",
            ),
            (
                r#"mirrors = ["https://x/"]
[timeouts]
read = "0""#,
                "timeouts",
            ),
        ] {
            match parse(text) {
                Err(Error::ConfigInvalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            parse("mirrors = [\"https://x/\"]\nsurprise = 1"),
            Err(Error::ConfigParse { .. })
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        for bad in ["", "5", "h", "1x", "-1h", "99999999999999999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
