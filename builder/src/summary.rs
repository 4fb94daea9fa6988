//! The one-screen summary `ksplice-create` prints when it is done (or refuses).

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::Refusal;

/// The stages the summary times, in pipeline order.
pub const STAGES: [&str; 6] = [
    "checkout", "prepare", "compile", "diff", "module", "package",
];

/// What one object pair gave.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ObjectSummary {
    /// `fs/proc/cmdline.o`
    pub object: String,
    /// `vmlinux` or the module name.
    pub target: String,
    pub changed: Vec<String>,
    pub new: Vec<String>,
    /// "no functional change", "refused", ...
    pub note: Option<String>,
}

/// Called with a stage's name when it starts (progress output of long runs).
pub struct StageHook(Box<dyn FnMut(&'static str) + Send>);

impl StageHook {
    pub fn new(f: impl FnMut(&'static str) + Send + 'static) -> Self {
        StageHook(Box::new(f))
    }
}

impl fmt::Debug for StageHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StageHook")
    }
}

/// Everything the summary shows; filled as the pipeline runs.
#[derive(Debug, Default)]
pub struct Summary {
    pub times: Vec<(&'static str, Duration)>,
    pub objects: Vec<ObjectSummary>,
    pub refusals: Vec<Refusal>,
    pub notes: Vec<String>,
    pub package: Option<PathBuf>,
    pub cached_tree: bool,
    /// Told when each stage starts.
    pub on_stage: Option<StageHook>,
}

impl Summary {
    /// Run `f` and add its wall time to `stage`.
    pub fn time<T>(&mut self, stage: &'static str, f: impl FnOnce(&mut Summary) -> T) -> T {
        self.enter(stage);
        let start = Instant::now();
        let out = f(self);
        self.add_time(stage, start.elapsed());
        out
    }

    /// Tell the [`StageHook`] that `stage` starts.
    pub fn enter(&mut self, stage: &'static str) {
        if let Some(hook) = &mut self.on_stage {
            (hook.0)(stage);
        }
    }

    pub fn add_time(&mut self, stage: &'static str, d: Duration) {
        match self.times.iter_mut().find(|(s, _)| *s == stage) {
            Some((_, t)) => *t += d,
            None => self.times.push((stage, d)),
        }
    }

    pub fn total(&self) -> Duration {
        self.times.iter().map(|(_, d)| *d).sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "ksplice-create summary")?;
        for o in &self.objects {
            write!(f, "  {:<32} [{}]", o.object, o.target)?;
            if let Some(n) = &o.note {
                write!(f, " {n}")?;
            }
            writeln!(f)?;
            if !o.changed.is_empty() {
                writeln!(f, "      changed: {}", o.changed.join(", "))?;
            }
            if !o.new.is_empty() {
                writeln!(f, "      new:     {}", o.new.join(", "))?;
            }
        }
        if !self.refusals.is_empty() {
            writeln!(f, "  refused:")?;
            for r in &self.refusals {
                writeln!(f, "    {r}")?;
            }
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        let mut times = Vec::new();
        for s in STAGES {
            if let Some((_, d)) = self.times.iter().find(|(n, _)| *n == s) {
                times.push(format!("{s} {:.1}s", d.as_secs_f64()));
            }
        }
        writeln!(
            f,
            "  time: {} | total {:.1}s{}",
            times.join(", "),
            self.total().as_secs_f64(),
            if self.cached_tree {
                " (cached pre tree)"
            } else {
                ""
            }
        )?;
        if let Some(p) = &self.package {
            writeln!(f, "  package: {}", p.display())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_objects_refusals_and_stage_times() {
        let mut s = Summary::default();
        s.add_time("compile", Duration::from_millis(1500));
        s.add_time("checkout", Duration::from_millis(200));
        s.add_time("compile", Duration::from_millis(500));
        s.objects.push(ObjectSummary {
            object: "fs/proc/cmdline.o".into(),
            target: "vmlinux".into(),
            changed: vec!["cmdline_proc_show".into()],
            ..Default::default()
        });
        s.refusals.push(Refusal {
            what: "lib/x.c".into(),
            reason: "no".into(),
        });
        let text = s.to_string();
        assert!(text.contains("fs/proc/cmdline.o"), "{text}");
        assert!(text.contains("changed: cmdline_proc_show"), "{text}");
        assert!(text.contains("lib/x.c: no"), "{text}");
        // Pipeline order, summed per stage.
        assert!(
            text.contains("time: checkout 0.2s, compile 2.0s | total 2.2s"),
            "{text}"
        );
    }
}
