//! How bytes reach tough: ureq for http(s) (timeouts, proxy, CA roots, a
//! capped body read chunk by chunk) and tough's own FilesystemTransport for
//! file:// mirrors; a target download resumes from a partial file with an
//! HTTP Range request.
//!
//! The transport only moves bytes. Every check on them (sizes, hashes,
//! signatures, versions, expiry) is tough's, which reads the stream chunk by
//! chunk and stops past the length the metadata allows.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tough::{Bytes, FilesystemTransport, Transport, TransportError, TransportErrorKind};
use url::Url;

use super::config::{Config, Proxy};
use crate::error::{Error, Result};

/// Bytes handed to tough per stream item: small enough that tough's size
/// limit stops a body that runs past its length early.
const CHUNK: usize = 64 * 1024;
/// The most any metadata body may be (tough's largest default limit, for
/// targets.json, is 10 MiB); tough enforces the exact limits.
const MAX_METADATA_BODY: u64 = 16 * 1024 * 1024;
/// Largest CA file read (Debian's whole bundle is about 220 KB).
const MAX_CA_FILE: u64 = 4 * 1024 * 1024;
/// Debian's CA bundle, used for https mirrors when no `ca_file` is set.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A network failure, the source of a tough [`TransportError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("{source}")]
    Request {
        #[source]
        source: ureq::Error,
    },
    /// The mirror's certificate did not verify against the roots in use;
    /// names them, since the usual fix is `ca_file`.
    #[error("TLS certificate refused (roots: {roots}): {source}")]
    Certificate {
        roots: String,
        #[source]
        source: ureq::Error,
    },
    #[error("HTTP status {status}")]
    Status { status: u16 },
    #[error("reading the response: {source}")]
    Read {
        #[source]
        source: io::Error,
    },
    #[error("partial download {path}: {source}")]
    Partial {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where an interrupted download of one target is kept, and its TUF length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The exact URL tough fetches the target from.
    pub url: Url,
    /// A file in a 0700 directory of the state dir, already created.
    pub partial: PathBuf,
    pub length: u64,
}

/// The transport of one `ksplice update` run.
#[derive(Debug, Clone)]
pub struct MirrorTransport {
    agent: ureq::Agent,
    /// Where the https roots came from, for certificate errors.
    roots: String,
    /// Set while a target is being downloaded; read by [`Transport::fetch`]
    /// (tough owns the transport, so the plan is shared).
    resume: Arc<Mutex<Option<Resume>>>,
}

impl MirrorTransport {
    /// An HTTP agent configured from `cfg`; CA files are read now.
    pub fn new(cfg: &Config, system_ca: &Path) -> Result<Self> {
        use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
        let needs_tls = cfg.mirrors.iter().any(|m| m.scheme() == "https");
        let roots = match &cfg.ca_file {
            Some(path) => format!("ca_file {}", path.display()),
            None => format!("system bundle {}", system_ca.display()),
        };
        let certs = match (&cfg.ca_file, needs_tls) {
            // Read even when no mirror is https: a bad file is a
            // configuration error the day it is written, not the day a
            // mirror moves to https.
            (Some(path), _) => read_ca_file(path).map_err(|source| Error::CaFile {
                path: path.clone(),
                source,
            })?,
            // Without a bundle every https handshake fails, naming the
            // unknown issuer: an error, never a panic.
            (None, true) => read_pem_certs(system_ca).unwrap_or_default(),
            (None, false) => Vec::new(),
        };
        let crypto = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(crypto)
            .root_certs(RootCerts::new_with_certs(&certs))
            .build();
        let proxy = match &cfg.proxy {
            Proxy::FromEnv => ureq::Proxy::try_from_env(),
            Proxy::Url(u) => Some(ureq::Proxy::new(u).map_err(|e| Error::ConfigInvalid {
                path: PathBuf::from("client.toml"),
                field: "proxy",
                reason: e.to_string(),
            })?),
        };
        let t = cfg.timeouts;
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .proxy(proxy)
            // 206, 404 and 416 are answers this transport handles itself.
            .http_status_as_error(false)
            .timeout_connect(Some(t.connect))
            .timeout_per_read(Some(t.read))
            .timeout_global(Some(t.total))
            .user_agent(concat!("ksplice/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(MirrorTransport {
            agent,
            roots,
            resume: Arc::new(Mutex::new(None)),
        })
    }

    /// Resume this target download from `r.partial` until [`Self::clear_resume`].
    pub fn set_resume(&self, r: Resume) {
        if let Ok(mut g) = self.resume.lock() {
            *g = Some(r);
        }
    }

    pub fn clear_resume(&self) {
        if let Ok(mut g) = self.resume.lock() {
            *g = None;
        }
    }

    fn plan_for(&self, url: &Url) -> Option<Resume> {
        self.resume
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .filter(|r| &r.url == url)
    }

    fn get(
        &self,
        url: &Url,
        from: Option<u64>,
    ) -> Result<ureq::http::Response<ureq::Body>, TransportError> {
        let mut req = self.agent.get(url.as_str());
        if let Some(from) = from {
            req = req.header("Range", format!("bytes={from}-"));
        }
        req.call().map_err(|source| {
            let e = if is_certificate_error(&source) {
                NetError::Certificate {
                    roots: self.roots.clone(),
                    source,
                }
            } else {
                NetError::Request { source }
            };
            net(url, e)
        })
    }

    fn http_fetch(&self, url: Url) -> Result<tough::TransportStream, TransportError> {
        let Some(plan) = self.plan_for(&url) else {
            let resp = self.get(&url, None)?;
            check_status(&url, resp.status().as_u16(), &[200])?;
            return Ok(body_stream(url, Vec::new(), resp, MAX_METADATA_BODY, None));
        };
        let partial_err = |source| {
            net(
                &url,
                NetError::Partial {
                    path: plan.partial.clone(),
                    source,
                },
            )
        };
        let mut file = open_partial(&plan.partial).map_err(partial_err)?;
        let mut have = file.metadata().map_err(partial_err)?.len();
        if have >= plan.length {
            // Complete yet not accepted, or longer than allowed: start over.
            have = 0;
        }
        // Past the length, tough stops the stream; two chunks of slack let
        // it see the excess and name it.
        let cap = plan.length.saturating_add(2 * CHUNK as u64);
        if have > 0 {
            let resp = self.get(&url, Some(have))?;
            let status = resp.status().as_u16();
            let range_ok = status == 206
                && resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with(&format!("bytes {have}-")));
            if range_ok {
                let mut prefix = Vec::new();
                file.seek(SeekFrom::Start(0)).map_err(partial_err)?;
                (&mut file)
                    .take(have)
                    .read_to_end(&mut prefix)
                    .map_err(partial_err)?;
                file.seek(SeekFrom::Start(have)).map_err(partial_err)?;
                let sink = Sink {
                    file,
                    room: plan.length - have,
                };
                return Ok(body_stream(url, prefix, resp, cap, Some(sink)));
            }
            if status == 200 {
                // The server ignored the range: the whole file follows.
                file.set_len(0).map_err(partial_err)?;
                file.seek(SeekFrom::Start(0)).map_err(partial_err)?;
                let sink = Sink {
                    file,
                    room: plan.length,
                };
                return Ok(body_stream(url, Vec::new(), resp, cap, Some(sink)));
            }
            check_status(&url, status, &[206, 416])?;
            // 416 or a range we did not ask for: start from zero.
        }
        file.set_len(0).map_err(partial_err)?;
        file.seek(SeekFrom::Start(0)).map_err(partial_err)?;
        let resp = self.get(&url, None)?;
        check_status(&url, resp.status().as_u16(), &[200])?;
        let sink = Sink {
            file,
            room: plan.length,
        };
        Ok(body_stream(url, Vec::new(), resp, cap, Some(sink)))
    }
}

#[tough::async_trait]
impl Transport for MirrorTransport {
    async fn fetch(&self, url: Url) -> Result<tough::TransportStream, TransportError> {
        match url.scheme() {
            "file" => FilesystemTransport.fetch(url).await,
            // Blocking I/O on the current-thread runtime: there is nothing
            // else for it to run meanwhile.
            "http" | "https" => self.http_fetch(url),
            _ => Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                url,
            )),
        }
    }
}

/// Whether the handshake failed on the server's certificate (ureq reports
/// rustls's verdict directly or inside an I/O error).
fn is_certificate_error(e: &ureq::Error) -> bool {
    let tls = match e {
        ureq::Error::Rustls(t) => Some(t),
        ureq::Error::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    matches!(
        tls,
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
    )
}

fn net(url: &Url, e: NetError) -> TransportError {
    TransportError::new_with_cause(TransportErrorKind::Other, url, e)
}

fn check_status(url: &Url, status: u16, ok: &[u16]) -> Result<(), TransportError> {
    if ok.contains(&status) {
        Ok(())
    } else if status == 404 || status == 410 {
        // tough tells "not there" (the end of the root chain) from failures.
        Err(TransportError::new_with_cause(
            TransportErrorKind::FileNotFound,
            url,
            NetError::Status { status },
        ))
    } else {
        Err(net(url, NetError::Status { status }))
    }
}

fn open_partial(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(f)
}

/// Why the configured `ca_file` cannot be the roots of https mirrors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaFileError {
    #[error("cannot be read: {source}")]
    Read {
        #[source]
        source: io::Error,
    },
    #[error("is not PEM: {source}")]
    Pem {
        #[source]
        source: ureq::Error,
    },
    #[error("holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate,
    /// ureq would skip it silently and every handshake would fail later
    /// with "unknown issuer", far from the cause.
    #[error("certificate {index} (counting from 1) is not a usable X.509 trust anchor: {source}")]
    BadCertificate {
        index: usize,
        #[source]
        source: rustls::Error,
    },
}

/// The certificates of the configured `ca_file`, every one of them valid.
fn read_ca_file(
    path: &Path,
) -> std::result::Result<Vec<ureq::tls::Certificate<'static>>, CaFileError> {
    let pem = super::config::read_capped(path, MAX_CA_FILE).map_err(|e| match e {
        Error::Io { source, .. } => CaFileError::Read { source },
        other => CaFileError::Read {
            source: io::Error::other(other.to_string()),
        },
    })?;
    let certs = parse_pem_certs(&pem).map_err(|source| CaFileError::Pem { source })?;
    if certs.is_empty() {
        return Err(CaFileError::NoCertificate);
    }
    for (i, c) in certs.iter().enumerate() {
        rustls::RootCertStore::empty()
            .add(rustls::pki_types::CertificateDer::from(c.der()))
            .map_err(|source| CaFileError::BadCertificate {
                index: i + 1,
                source,
            })?;
    }
    Ok(certs)
}

/// The system bundle; whatever of it does not parse is skipped (by ureq).
fn read_pem_certs(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>> {
    let pem = super::config::read_capped(path, MAX_CA_FILE)?;
    parse_pem_certs(&pem).map_err(|e| Error::io(path, io::Error::other(e.to_string())))
}

/// The certificates of a PEM file; private keys in it are ignored.
fn parse_pem_certs(
    pem: &[u8],
) -> std::result::Result<Vec<ureq::tls::Certificate<'static>>, ureq::Error> {
    let mut out = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        if let ureq::tls::PemItem::Certificate(c) = item? {
            out.push(c);
        }
    }
    Ok(out)
}

/// Appends what arrives to the partial file, never past the TUF length.
#[derive(Debug)]
struct Sink {
    file: File,
    room: u64,
}

/// A blocking body read as a stream, `prefix` (the partial file) first.
struct BodyStream {
    url: Url,
    prefix: Option<Vec<u8>>,
    reader: Mutex<Box<dyn Read + Send>>,
    sink: Option<Mutex<Sink>>,
    done: bool,
}

fn body_stream(
    url: Url,
    prefix: Vec<u8>,
    resp: ureq::http::Response<ureq::Body>,
    cap: u64,
    sink: Option<Sink>,
) -> tough::TransportStream {
    let reader = resp.into_body().into_with_config().limit(cap).reader();
    Box::pin(BodyStream {
        url,
        prefix: Some(prefix).filter(|p| !p.is_empty()),
        reader: Mutex::new(Box::new(reader)),
        sink: sink.map(Mutex::new),
        done: false,
    })
}

impl futures_core::Stream for BodyStream {
    type Item = Result<Bytes, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(p) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Bytes::from(p))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let mut buf = vec![0u8; CHUNK];
        let read = match this.reader.lock() {
            Ok(mut r) => r.read(&mut buf),
            Err(_) => Err(io::Error::other("reader poisoned")),
        };
        let n = match read {
            Ok(0) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Ok(n) => n,
            Err(source) => {
                this.done = true;
                return Poll::Ready(Some(Err(net(&this.url, NetError::Read { source }))));
            }
        };
        buf.truncate(n);
        if let Some(sink) = &this.sink {
            if let Ok(mut s) = sink.lock() {
                let keep = (n as u64).min(s.room) as usize;
                // A failed write only costs the resume, not this download.
                if s.file.write_all(&buf[..keep]).is_ok() {
                    s.room -= keep as u64;
                } else {
                    s.room = 0;
                }
            }
        }
        Poll::Ready(Some(Ok(Bytes::from(buf))))
    }
}
