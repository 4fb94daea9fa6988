#!/usr/bin/env python3
"""Writes TUF repositories with python-tuf, the reference implementation, for
the ksplice client's interoperability tests (tests/integration/update.rs).

    python_tuf_repo.py OUT PACKAGE TARGET_INFO_JSON

PACKAGE becomes the target ksplice-<id>.tar.gz, with the ksplice target
information (a JSON file) under the target's custom key "ksplice". Under OUT,
one repository per variant, each with its own ed25519 keys (securesystemslib)
and the usual layout (metadata/ with 1.root.json, timestamp.json,
N.snapshot.json, N.targets.json; targets/<sha256>.<name>; consistent
snapshots):

    valid/              a good repository at version 2
    valid/rollback-timestamp.json
                        a correctly signed timestamp of version 1
    expired-timestamp/  the timestamp expired a day ago
    bad-signature/      the timestamp's signature altered
"""

import hashlib
import json
import os
import sys
from datetime import datetime, timedelta, timezone

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    MetaFile,
    Metadata,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

ROLES = ("root", "targets", "snapshot", "timestamp")


def now():
    return datetime.now(timezone.utc).replace(microsecond=0)


def meta_file(version, data):
    return MetaFile(
        version=version,
        length=len(data),
        hashes={"sha256": hashlib.sha256(data).hexdigest()},
    )


def signed_bytes(signed, signer):
    md = Metadata(signed)
    md.sign(signer)
    return md.to_bytes(JSONSerializer(compact=False))


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def repository(out, package, info, version=2, timestamp_expires=None):
    """Writes one repository; returns its signers and snapshot bytes."""
    signers = {role: CryptoSigner.generate_ed25519() for role in ROLES}
    root = Root(expires=now() + timedelta(days=365), consistent_snapshot=True)
    for role, signer in signers.items():
        root.add_key(signer.public_key, role)
    write(os.path.join(out, "metadata", "1.root.json"), signed_bytes(root, signers["root"]))

    name = "ksplice-%s.tar.gz" % info["id"]
    target = TargetFile.from_data(name, package, ["sha256"])
    target.unrecognized_fields["custom"] = {"ksplice": info}
    sha = target.hashes["sha256"]
    write(os.path.join(out, "targets", "%s.%s" % (sha, name)), package)

    targets = Targets(version=version, expires=now() + timedelta(days=30))
    targets.targets[name] = target
    targets_bytes = signed_bytes(targets, signers["targets"])
    write(os.path.join(out, "metadata", "%d.targets.json" % version), targets_bytes)

    snapshot = Snapshot(version=version, expires=now() + timedelta(days=7))
    snapshot.meta["targets.json"] = meta_file(version, targets_bytes)
    snapshot_bytes = signed_bytes(snapshot, signers["snapshot"])
    write(os.path.join(out, "metadata", "%d.snapshot.json" % version), snapshot_bytes)

    timestamp = Timestamp(
        version=version,
        expires=timestamp_expires or now() + timedelta(days=1),
        snapshot_meta=meta_file(version, snapshot_bytes),
    )
    write(
        os.path.join(out, "metadata", "timestamp.json"),
        signed_bytes(timestamp, signers["timestamp"]),
    )
    return signers, snapshot_bytes


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    out, package_path, info_path = sys.argv[1:]
    with open(package_path, "rb") as f:
        package = f.read()
    with open(info_path) as f:
        info = json.load(f)

    valid = os.path.join(out, "valid")
    signers, snapshot_bytes = repository(valid, package, info)
    # An older timestamp, correctly signed: a rollback once version 2 is trusted.
    old = Timestamp(
        version=1,
        expires=now() + timedelta(days=1),
        snapshot_meta=meta_file(2, snapshot_bytes),
    )
    write(
        os.path.join(valid, "rollback-timestamp.json"),
        signed_bytes(old, signers["timestamp"]),
    )

    repository(
        os.path.join(out, "expired-timestamp"),
        package,
        info,
        timestamp_expires=now() - timedelta(days=1),
    )

    bad = os.path.join(out, "bad-signature")
    repository(bad, package, info)
    path = os.path.join(bad, "metadata", "timestamp.json")
    with open(path) as f:
        doc = json.load(f)
    sig = doc["signatures"][0]["sig"]
    doc["signatures"][0]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    write(path, json.dumps(doc, indent=1).encode())


if __name__ == "__main__":
    main()
