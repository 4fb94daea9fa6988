//! Text shown to a terminal: strings from manifests and the journal are
//! escaped so that a control character cannot rewrite the screen.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as is: C0/C1 controls (escape
/// sequences, carriage returns, newlines that would forge a line) and the
/// bidirectional overrides that reorder what is displayed.
fn dangerous(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every dangerous character written as a Rust escape (`\u{1b}`,
/// `\n`); `\` itself is doubled only when something was escaped, so plain
/// text is shown unchanged.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(dangerous) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if dangerous(c) || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Escape every item of a list and join them with `sep`.
pub fn escape_join(items: &[String], sep: &str) -> String {
    items
        .iter()
        .map(|i| escape(i))
        .collect::<Vec<_>>()
        .join(sep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_unchanged_controls_are_escaped() {
        assert_eq!(
            escape("fix fix-a (CVE-2026-0001) ä"),
            "fix fix-a (CVE-2026-0001) ä"
        );
        assert_eq!(escape("a\\b"), "a\\b");
        assert_eq!(
            escape("ok\u{1b}]0;pwned\u{7}\nfix-b: applied\r\\"),
            "ok\\u{1b}]0;pwned\\u{7}\\nfix-b: applied\\r\\\\"
        );
        assert_eq!(escape("a\u{202e}b\u{9b}c"), "a\\u{202e}b\\u{9b}c");
    }
}
