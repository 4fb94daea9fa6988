//! Parses the guest's serial log: `@@KSPLICE key=value ...` markers and base64 blobs between markers.
//!
//! The guest init (ci/guest/init) and its helpers (ci/guest/lib.sh) print:
//! - `@@KSPLICE scenario=S event=start t=T`
//! - `@@KSPLICE scenario=S event=step step=NAME result=ok|fail rc=N dur=D t=T`
//! - `@@KSPLICE scenario=S event=metric name=N value=V` (a figure the scenario measured)
//! - `@@KSPLICE scenario=S event=end result=pass|fail rc=N t=T`
//! - `@@KSPLICE event=done t=T` once every scenario ran
//! - `@@KSPLICE-BLOB begin name=N`, base64 lines, `@@KSPLICE-BLOB end name=N`

use std::collections::BTreeMap;

const MARK: &str = "@@KSPLICE ";
const BLOB: &str = "@@KSPLICE-BLOB ";

/// One `@@KSPLICE` line as key/value pairs.
pub type Marker = BTreeMap<String, String>;

/// Parses one line; `None` when it is not a marker.
pub fn parse_line(line: &str) -> Option<Marker> {
    // Kernel messages may share the line with a marker; the marker starts where the prefix does.
    let at = line.find(MARK)?;
    let rest = &line[at + MARK.len()..];
    Some(
        rest.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// What a scenario reported in the guest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestResult {
    pub started: bool,
    /// `Some(true)` pass, `Some(false)` fail, `None` never finished.
    pub passed: Option<bool>,
    /// Steps in order: (name, ok, seconds).
    pub steps: Vec<(String, bool, f64)>,
    /// Figures the scenario measured (`event=metric name=N value=V`), in order.
    pub metrics: Vec<(String, String)>,
}

impl GuestResult {
    /// Seconds of the first step named `name`.
    pub fn step_secs(&self, name: &str) -> Option<f64> {
        self.steps.iter().find(|s| s.0 == name).map(|s| s.2)
    }
}

/// Everything parsed from one serial log.
#[derive(Debug, Default)]
pub struct Log {
    pub scenarios: BTreeMap<String, GuestResult>,
    pub blobs: BTreeMap<String, String>,
    pub done: bool,
}

/// Parses a whole serial log.
pub fn parse(text: &str) -> Log {
    let mut log = Log::default();
    let mut blob: Option<(String, String)> = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(at) = line.find(BLOB) {
            let m: Marker = line[at + BLOB.len()..]
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let name = m.get("name").cloned().unwrap_or_default();
            if line.contains(" begin ") {
                blob = Some((name, String::new()));
            } else if let Some((n, data)) = blob.take() {
                if n == name {
                    log.blobs.insert(n, data);
                }
            }
            continue;
        }
        if let Some((_, data)) = blob.as_mut() {
            // Only base64 characters belong to a blob; anything else is stray console output.
            let l = line.trim();
            if !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
            {
                data.push_str(l);
                data.push('\n');
            }
            continue;
        }
        let Some(m) = parse_line(line) else { continue };
        if m.get("event").map(String::as_str) == Some("done") {
            log.done = true;
            continue;
        }
        let Some(name) = m.get("scenario") else {
            continue;
        };
        let r = log.scenarios.entry(name.clone()).or_default();
        match m.get("event").map(String::as_str) {
            Some("start") => r.started = true,
            Some("step") => r.steps.push((
                m.get("step").cloned().unwrap_or_default(),
                m.get("result").map(String::as_str) == Some("ok"),
                m.get("dur").and_then(|d| d.parse().ok()).unwrap_or(0.0),
            )),
            Some("end") => r.passed = Some(m.get("result").map(String::as_str) == Some("pass")),
            Some("metric") => r.metrics.push((
                m.get("name").cloned().unwrap_or_default(),
                m.get("value").cloned().unwrap_or_default(),
            )),
            _ => {}
        }
    }
    log
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn scenario_markers_and_blob() {
        let text = "\
noise
@@KSPLICE scenario=a event=start t=1.0\r
@@KSPLICE scenario=a event=step step=apply result=ok rc=0 dur=0.52 t=2
@@KSPLICE scenario=a event=metric name=cycles-per-minute value=4.20
@@KSPLICE scenario=a event=end result=pass rc=0 t=3
@@KSPLICE scenario=b event=start t=3
[    3.1] some kernel line @@KSPLICE scenario=b event=end result=fail rc=1 t=4
@@KSPLICE-BLOB begin name=profile
QUJD
[    4.0] stray
REVG
@@KSPLICE-BLOB end name=profile
@@KSPLICE event=done t=5
";
        let log = parse(text);
        assert!(log.done);
        let a = &log.scenarios["a"];
        assert_eq!(a.passed, Some(true));
        assert_eq!(a.steps, vec![("apply".to_string(), true, 0.52)]);
        assert_eq!(a.step_secs("apply"), Some(0.52));
        assert_eq!(
            a.metrics,
            vec![("cycles-per-minute".to_string(), "4.20".to_string())]
        );
        assert_eq!(log.scenarios["b"].passed, Some(false));
        assert_eq!(log.blobs["profile"], "QUJD\nREVG\n");
        assert_eq!(log.scenarios.len(), 2);
    }

    #[test]
    fn unfinished_scenario_has_no_result() {
        let log = parse("@@KSPLICE scenario=a event=start t=1\n");
        assert!(!log.done);
        assert_eq!(log.scenarios["a"].passed, None);
        assert!(log.scenarios["a"].started);
    }
}
