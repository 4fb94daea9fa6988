//! The results table: scenario, build seconds, apply seconds, result; closing `N passed, N failed`.

use std::fmt;

/// How a scenario ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
    /// A piece it needs has not landed; counted as a failure.
    NotRun(String),
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub scenario: String,
    pub build_s: Option<f64>,
    pub apply_s: Option<f64>,
    pub outcome: Outcome,
    /// Said after the result, e.g. that a cached result was reused.
    pub note: Option<String>,
}

impl Row {
    pub fn new(scenario: &str, outcome: Outcome) -> Self {
        Self {
            scenario: scenario.to_string(),
            build_s: None,
            apply_s: None,
            outcome,
            note: None,
        }
    }
}

/// The whole table with its closing line.
#[derive(Debug)]
pub struct Table<'a>(pub &'a [Row]);

impl Table<'_> {
    pub fn passed(&self) -> usize {
        self.0.iter().filter(|r| r.outcome == Outcome::Pass).count()
    }
    pub fn failed(&self) -> usize {
        self.0.len() - self.passed()
    }
}

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self
            .0
            .iter()
            .map(|r| r.scenario.len())
            .max()
            .unwrap_or(8)
            .max(8);
        let secs = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{s:.1}"));
        writeln!(
            f,
            "{:<w$}  {:>7}  {:>7}  result",
            "scenario", "build s", "apply s"
        )?;
        for r in self.0 {
            let mut result = match &r.outcome {
                Outcome::Pass => "pass".to_string(),
                Outcome::Fail(why) => format!("FAIL: {why}"),
                Outcome::NotRun(why) => format!("NOT RUN: {why}"),
            };
            if let Some(n) = &r.note {
                result.push_str(&format!(" ({n})"));
            }
            writeln!(
                f,
                "{:<w$}  {:>7}  {:>7}  {result}",
                r.scenario,
                secs(r.build_s),
                secs(r.apply_s)
            )?;
        }
        write!(f, "{} passed, {} failed", self.passed(), self.failed())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn not_run_counts_as_failed() {
        let mut a = Row::new("a", Outcome::Pass);
        a.build_s = Some(1.3);
        a.apply_s = Some(0.5);
        let rows = [
            a,
            Row::new("bb", Outcome::NotRun("not landed: [Create]".into())),
            Row::new("c", Outcome::Fail("step apply failed".into())),
        ];
        let t = Table(&rows);
        assert_eq!((t.passed(), t.failed()), (1, 2));
        assert_eq!(
            t.to_string(),
            "\
scenario  build s  apply s  result
a             1.3      0.5  pass
bb              -        -  NOT RUN: not landed: [Create]
c               -        -  FAIL: step apply failed
1 passed, 2 failed"
        );
    }
}
