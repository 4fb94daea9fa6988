//! Detached ed25519 signatures over the exact `manifest.toml` bytes, and the `manifest.sig` text format.
//!
//! `manifest.sig` is ASCII: the line `ksplice-signatures-v1`, then one line per signature,
//! `<key id: 64 lowercase hex> <signature: 128 lowercase hex>`, each line ending in `\n`.
//! A signature is over `MANIFEST_DOMAIN ++ manifest bytes`, never over a re-serialization.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};
use crate::keys::{is_lower_hex, KeyId, SigningKey, TrustPolicy};
use crate::manifest::Manifest;
use crate::verified::Verified;

/// Domain-separation tag prefixed to the manifest bytes before signing, so that a
/// ksplice manifest signature can never be replayed as a signature over anything else.
pub const MANIFEST_DOMAIN: &[u8] = b"ksplice-manifest-v1\0";

/// First line of `manifest.sig`.
const HEADER: &str = "ksplice-signatures-v1";

/// At most this many signature lines; thresholds are small, so more is abuse.
pub const MAX_SIGNATURES: usize = 64;

/// One parsed `manifest.sig` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SignatureLine {
    pub key_id: KeyId,
    pub signature: ed25519_dalek::Signature,
}

fn message(manifest_bytes: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(MANIFEST_DOMAIN.len() + manifest_bytes.len());
    msg.extend_from_slice(MANIFEST_DOMAIN);
    msg.extend_from_slice(manifest_bytes);
    msg
}

/// Signs `manifest_bytes` with every key (each distinct key once) and returns the `manifest.sig` text.
pub fn sign_manifest(manifest_bytes: &[u8], keys: &[&SigningKey]) -> Result<Vec<u8>> {
    if keys.is_empty() {
        return Err(Error::NoSigningKey);
    }
    let msg = message(manifest_bytes);
    let mut out = format!("{HEADER}\n");
    let mut seen = BTreeSet::new();
    for key in keys {
        let id = key.public().key_id();
        if seen.insert(id.clone()) {
            let sig = key.sign(&msg);
            out.push_str(&format!("{id} {}\n", hex::encode(sig.to_bytes())));
        }
    }
    Ok(out.into_bytes())
}

/// Parses `manifest.sig` strictly (exact header, lowercase hex, one space, `\n` endings).
pub(crate) fn parse_signature_file(bytes: &[u8]) -> Result<Vec<SignatureLine>> {
    let bad = |line, reason| Error::MalformedSignatureFile { line, reason };
    let text = std::str::from_utf8(bytes).map_err(|_| bad(0, "not ASCII text"))?;
    let body = text
        .strip_suffix('\n')
        .ok_or(bad(0, "must end with a newline"))?;
    let mut lines = body.split('\n');
    if lines.next() != Some(HEADER) {
        return Err(bad(1, "first line must be ksplice-signatures-v1"));
    }
    let mut out = Vec::new();
    for (index, line) in lines.enumerate() {
        let number = index + 2;
        if out.len() == MAX_SIGNATURES {
            return Err(bad(number, "too many signatures"));
        }
        let (id, sig) = line
            .split_once(' ')
            .ok_or(bad(number, "expected '<key id> <signature>'"))?;
        let key_id =
            KeyId::parse(id).ok_or(bad(number, "key id must be 64 lowercase hex digits"))?;
        if !is_lower_hex(sig, 128) {
            return Err(bad(number, "signature must be 128 lowercase hex digits"));
        }
        let mut raw = [0u8; 64];
        hex::decode_to_slice(sig, &mut raw)
            .map_err(|_| bad(number, "signature must be 128 lowercase hex digits"))?;
        out.push(SignatureLine {
            key_id,
            signature: ed25519_dalek::Signature::from_bytes(&raw),
        });
    }
    if out.is_empty() {
        return Err(bad(2, "no signatures"));
    }
    Ok(out)
}

/// Checks `manifest.sig` against the policy over the exact `manifest_bytes`.
///
/// Rules, in order:
/// 1. The signature file must parse.
/// 2. Every signature by a trusted key must verify (`verify_strict`); one that does not
///    means the manifest or signature was altered, and the package is refused outright.
/// 3. Signatures by keys the policy does not list are ignored (a package may carry
///    signatures for several fleets).
/// 4. Distinct trusted keys with a valid signature are counted; several signatures by
///    one key count once. Fewer than the threshold refuses the package.
pub(crate) fn check_signatures(
    manifest_bytes: &[u8],
    sig_bytes: &[u8],
    policy: &TrustPolicy,
) -> Result<()> {
    let lines = parse_signature_file(sig_bytes)?;
    let msg = message(manifest_bytes);
    let mut valid: BTreeSet<KeyId> = BTreeSet::new();
    let mut untrusted: BTreeMap<KeyId, ()> = BTreeMap::new();
    for line in &lines {
        match policy.key(&line.key_id) {
            Some(key) if key.verify_strict(&msg, &line.signature) => {
                valid.insert(line.key_id.clone());
            }
            Some(_) => {
                return Err(Error::BadSignature {
                    key_id: line.key_id.to_string(),
                })
            }
            None => {
                untrusted.insert(line.key_id.clone(), ());
            }
        }
    }
    if valid.is_empty() && !untrusted.is_empty() {
        return Err(Error::UntrustedSigner {
            key_ids: untrusted.into_keys().map(|k| k.to_string()).collect(),
        });
    }
    if valid.len() < policy.threshold() {
        return Err(Error::ThresholdNotMet {
            valid: valid.len(),
            threshold: policy.threshold(),
        });
    }
    Ok(())
}

/// Verifies signatures over `manifest_bytes`, then parses and validates the manifest.
///
/// This is what a client uses to re-check a manifest it stored with its signature;
/// packages go through [`crate::package::verify_package`], which calls it too.
pub fn verify_manifest(
    manifest_bytes: &[u8],
    sig_bytes: &[u8],
    policy: &TrustPolicy,
) -> Result<Verified<Manifest>> {
    // 1. Signatures first: nothing of an unsigned manifest is even parsed.
    check_signatures(manifest_bytes, sig_bytes, policy)?;
    // 2. Then the content must be a valid manifest of our format.
    let manifest = Manifest::from_signed_bytes(manifest_bytes)?;
    Ok(Verified::new(manifest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;

    fn policy(keys: &[&SigningKey], threshold: usize) -> TrustPolicy {
        TrustPolicy::new(keys.iter().map(|k| k.public()).collect(), threshold).expect("policy")
    }

    #[test]
    fn signature_file_round_trips() {
        let a = SigningKey::from_seed(&[1; 32]);
        let b = SigningKey::from_seed(&[2; 32]);
        let text = sign_manifest(b"m", &[&a, &b, &a]).expect("sign");
        let lines = parse_signature_file(&text).expect("parse");
        assert_eq!(
            lines.iter().map(|l| l.key_id.clone()).collect::<Vec<_>>(),
            vec![a.public().key_id(), b.public().key_id()]
        );
        check_signatures(b"m", &text, &policy(&[&a, &b], 2)).expect("valid");
    }

    #[test]
    fn domain_tag_is_part_of_the_signed_message() {
        let a = SigningKey::from_seed(&[1; 32]);
        let raw = a.sign(b"m");
        let text = format!(
            "{HEADER}\n{} {}\n",
            a.public().key_id(),
            hex::encode(raw.to_bytes())
        );
        assert!(matches!(
            check_signatures(b"m", text.as_bytes(), &policy(&[&a], 1)),
            Err(Error::BadSignature { .. })
        ));
    }

    #[test]
    fn duplicate_signature_lines_count_once() {
        let a = SigningKey::from_seed(&[1; 32]);
        let b = SigningKey::from_seed(&[2; 32]);
        let one = String::from_utf8(sign_manifest(b"m", &[&a]).expect("sign")).expect("utf8");
        let line = one.lines().nth(1).expect("line");
        let twice = format!("{HEADER}\n{line}\n{line}\n");
        assert!(matches!(
            check_signatures(b"m", twice.as_bytes(), &policy(&[&a, &b], 2)),
            Err(Error::ThresholdNotMet {
                valid: 1,
                threshold: 2
            })
        ));
    }

    #[test]
    fn malformed_signature_files_are_refused() {
        let a = SigningKey::from_seed(&[1; 32]);
        let good = String::from_utf8(sign_manifest(b"m", &[&a]).expect("sign")).expect("utf8");
        for bad in [
            String::new(),
            format!("{HEADER}\n"),
            good.trim_end().to_owned(),
            good.replace(HEADER, "ksplice-signatures-v2"),
            good.to_uppercase(),
            good.replacen(' ', "  ", 1),
            format!("{good}\n"),
        ] {
            assert!(
                matches!(
                    parse_signature_file(bad.as_bytes()),
                    Err(Error::MalformedSignatureFile { .. })
                ),
                "accepted {bad:?}"
            );
        }
    }
}
