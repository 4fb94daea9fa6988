//! Reading the kernel log (/dev/kmsg) from a point before a module load, to
//! report why the update's run-pre check refused (contracts.md C).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

use crate::host::Host;

/// A position in the kernel log; `None` when /dev/kmsg is not readable (the
/// refusal is then reported without the kernel's reason).
#[derive(Debug)]
pub struct Mark(Option<File>);

impl Mark {
    /// Remember the end of the log.
    pub fn now(host: &Host<'_>) -> Self {
        let open = || -> io::Result<File> {
            let mut f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(host.path("/dev/kmsg"))?;
            f.seek(SeekFrom::End(0))?;
            Ok(f)
        };
        Mark(open().ok())
    }

    /// Messages logged since the mark (one per record, header stripped).
    pub fn messages(self) -> Vec<String> {
        let Some(mut f) = self.0 else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        // Bounded: a chatty kernel must not keep us here forever.
        for _ in 0..10_000 {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    out.extend(text.lines().filter_map(record_text));
                }
                // EPIPE: records were overwritten before we read them; go on.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        out
    }
}

/// `6,1234,5678,-;text` → `text`; continuation lines (leading space, used for
/// key=value dictionaries) are dropped.
fn record_text(line: &str) -> Option<String> {
    if line.starts_with(' ') || line.is_empty() {
        return None;
    }
    match line.split_once(';') {
        Some((head, text))
            if head.bytes().all(|b| {
                b.is_ascii_digit() || b == b',' || b == b'-' || b.is_ascii_alphabetic()
            }) =>
        {
            Some(text.to_owned())
        }
        _ => Some(line.to_owned()),
    }
}

/// The run-pre refusals of `module` among `messages`.
pub fn run_pre_lines(messages: &[String], module: &str) -> Vec<String> {
    let needle = format!("{module}: run-pre:");
    messages
        .iter()
        .filter(|m| m.contains(&needle))
        .map(|m| m.trim().to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_kmsg_header_and_keeps_only_run_pre_of_module() {
        let msgs: Vec<String> = [
            "3,812,4711,-;ksplice_a: run-pre: mismatch in cmdline_proc_show+0x12: expected 48 found 90",
            " SUBSYSTEM=module",
            "4,813,4712,-;ksplice_ab: run-pre: mismatch in other+0x1: expected 00 found 01",
            "6,814,4713,-;ksplice_a: loaded",
        ]
        .iter()
        .filter_map(|l| record_text(l))
        .collect();
        assert_eq!(
            run_pre_lines(&msgs, "ksplice_a"),
            vec!["ksplice_a: run-pre: mismatch in cmdline_proc_show+0x12: expected 48 found 90"]
        );
    }
}
