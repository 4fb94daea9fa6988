//! The loopback mirror for fleet scenarios: a static HTTP server on 127.0.0.1 only.
//!
//! Python's `http.server` (its stock `SimpleHTTPRequestHandler`) serves the
//! directory as any static mirror would (no ksplice code on the serving side);
//! it binds port 0 and prints the port it got, so two runs never race for a
//! fixed port. It also exits when its stdin, a pipe from the harness, reaches
//! end of file: a harness killed by a signal (whose `Drop` never runs) leaves
//! no server behind.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// `python3 -c SERVER DIR`: `http.server`'s own handler on 127.0.0.1, port 0,
/// serving in a thread while the main thread waits for stdin's end of file.
const SERVER: &str = r#"
import functools, http.server, sys, threading
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print(f"Serving HTTP on 127.0.0.1 port {server.server_address[1]}", flush=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
sys.stdin.read()
"#;

/// A running server; killed when dropped, and gone on its own once the
/// harness's end of its stdin pipe closes.
#[derive(Debug)]
pub struct Mirror {
    child: Child,
    /// The loopback port it listens on.
    pub port: u16,
}

impl Mirror {
    /// Serves `dir` on 127.0.0.1; requests are logged to `log`.
    pub fn start(dir: &Path, log: &Path) -> Result<Mirror> {
        let mut child = Command::new("python3")
            .args(["-u", "-c", SERVER])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(
                std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?,
            )
            .spawn()
            .context("start python3 -m http.server")?;
        let out = child.stdout.take().context("http.server stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse::<u16>().ok());
        match port {
            Some(port) if line.contains("127.0.0.1") => Ok(Mirror { child, port }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("http.server did not report a loopback port: {line:?}")
            }
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn serves_the_directory_and_exits_when_the_harness_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("timestamp.json"), "{}\n").unwrap();
        let mut m = Mirror::start(dir.path(), &dir.path().join("log")).unwrap();
        let mut c = std::net::TcpStream::connect(("127.0.0.1", m.port)).unwrap();
        c.write_all(b"GET /timestamp.json HTTP/1.0\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
        assert!(reply.ends_with("\r\n\r\n{}\n"), "{reply}");
        // What a killed harness leaves: its end of the pipe closed.
        // (A server that ignored it would run on: fail after a generous bound, not hang.)
        drop(m.child.stdin.take());
        let mut status = None;
        for _ in 0..600 {
            status = m.child.try_wait().unwrap();
            if status.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert!(status.expect("the server outlived its stdin").success());
    }
}
