//! The loopback mirror for fleet scenarios: a static HTTP server on 127.0.0.1 only.
//!
//! Python's `http.server` serves the directory as any static mirror would (no
//! ksplice code on the serving side); it binds port 0 and prints the port it
//! got, so two runs never race for a fixed port.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running server; killed when dropped.
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
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdin(Stdio::null())
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
