//! Validation of relative paths inside a package (archive entry names and `files[].path`).

/// Longest accepted path: it must fit the 100-byte ustar name field, so no tar
/// extension headers (which the reader refuses) are ever needed.
pub const MAX_PATH_BYTES: usize = 100;

/// Why a path is unacceptable; mapped to the error variant of the context it was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameProblem {
    Absolute,
    ParentDirectory,
    Invalid(&'static str),
}

/// Checks a relative path: `/`-separated parts of `[A-Za-z0-9._+-]`, none empty, `.` or `..`.
///
/// Absolute paths and `..` are checked first so that they get their own error variants
/// whatever else is wrong with the name.
pub(crate) fn check(raw: &[u8]) -> Result<(), NameProblem> {
    if raw.first() == Some(&b'/') {
        return Err(NameProblem::Absolute);
    }
    if raw.split(|&b| b == b'/').any(|part| part == b"..") {
        return Err(NameProblem::ParentDirectory);
    }
    if raw.is_empty() {
        return Err(NameProblem::Invalid("empty name"));
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(NameProblem::Invalid("longer than 100 bytes"));
    }
    for part in raw.split(|&b| b == b'/') {
        if part.is_empty() {
            return Err(NameProblem::Invalid(
                "empty path component (leading, trailing or double '/')",
            ));
        }
        if part == b"." {
            return Err(NameProblem::Invalid("'.' path component"));
        }
        if !part
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b".-_+".contains(&b))
        {
            return Err(NameProblem::Invalid("characters outside [A-Za-z0-9._+-/]"));
        }
    }
    Ok(())
}

/// A relative package path that passed [`check`]: the only form in which an archive
/// entry name reaches the file system.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct EntryName(String);

impl EntryName {
    /// Validates an untrusted name.
    pub(crate) fn new(raw: &[u8]) -> Result<EntryName, NameProblem> {
        check(raw)?;
        // check() admits ASCII only.
        let text = std::str::from_utf8(raw).map_err(|_| NameProblem::Invalid("not ASCII"))?;
        Ok(EntryName(text.to_owned()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lossy text of an untrusted name for error messages.
pub(crate) fn display(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        for ok in ["a", "ksplice_x.ko", "modules/x-1.2+3.ko", "a/b/c"] {
            assert_eq!(check(ok.as_bytes()), Ok(()), "{ok}");
        }
    }

    #[test]
    fn classifies_bad_paths() {
        assert_eq!(check(b"/etc/passwd"), Err(NameProblem::Absolute));
        assert_eq!(check(b"/../x"), Err(NameProblem::Absolute));
        assert_eq!(check(b"../x"), Err(NameProblem::ParentDirectory));
        assert_eq!(check(b"a/../../x"), Err(NameProblem::ParentDirectory));
        assert_eq!(check(b".."), Err(NameProblem::ParentDirectory));
        for bad in [
            &b""[..],
            b"a//b",
            b"a/",
            b"./a",
            b"a b",
            b"a\0b",
            b"a\\b",
            b"\xff",
            &[b'a'; 101],
        ] {
            assert!(
                matches!(check(bad), Err(NameProblem::Invalid(_))),
                "{bad:?}"
            );
        }
        // `...` is a legal (if odd) file name, not a parent reference.
        assert_eq!(check(b"..."), Ok(()));
        assert_eq!(
            EntryName::new(b"a/b").map(|n| n.as_str().to_owned()),
            Ok("a/b".to_owned())
        );
        assert_eq!(EntryName::new(b"../b"), Err(NameProblem::ParentDirectory));
    }
}
