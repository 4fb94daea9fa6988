//! `Verified<T>`: proof that a value came out of signature and digest verification.

use std::ops::Deref;

/// A value that passed verification against a trust policy.
///
/// Only this crate's verifier builds one (the constructor is crate-private), so a
/// function taking `&Verified<Manifest>` cannot be handed an unchecked manifest.
/// There is deliberately no `into_inner`: the proof stays attached to the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<T> {
    inner: T,
}

impl<T> Verified<T> {
    /// Wraps a value the caller has just verified.
    pub(crate) fn new(inner: T) -> Self {
        Verified { inner }
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> AsRef<T> for Verified<T> {
    fn as_ref(&self) -> &T {
        &self.inner
    }
}
