#!/usr/bin/env python3
"""python-tuf's reference client reads a repository `ksplice-build repo` wrote.

Usage: python_tuf_client.py ROOT_JSON BASE_URL TARGET_NAME EXPECTED_FILE WORK_DIR

ROOT_JSON is the trusted initial root (1.root.json); BASE_URL serves the
repository's public/ directory (metadata/ and targets/ under it). The client
refreshes (walking the root chain, timestamp, snapshot, targets), downloads
TARGET_NAME and checks its bytes against EXPECTED_FILE; it prints the target's
custom metadata as JSON. Exit 0 on success, 1 on any failure (message on stderr).
"""

import json
import os
import shutil
import sys

from tuf.ngclient import Updater


def main() -> int:
    root_json, base_url, name, expected_file, work = sys.argv[1:6]
    metadata_dir = os.path.join(work, "metadata")
    target_dir = os.path.join(work, "targets")
    os.makedirs(metadata_dir, exist_ok=True)
    os.makedirs(target_dir, exist_ok=True)
    # ngclient's trust anchor: root.json in its local metadata directory.
    shutil.copyfile(root_json, os.path.join(metadata_dir, "root.json"))
    updater = Updater(
        metadata_dir=metadata_dir,
        metadata_base_url=base_url.rstrip("/") + "/metadata/",
        target_base_url=base_url.rstrip("/") + "/targets/",
        target_dir=target_dir,
    )
    updater.refresh()
    info = updater.get_targetinfo(name)
    if info is None:
        print(f"target {name} not in the repository", file=sys.stderr)
        return 1
    path = updater.download_target(info)
    with open(path, "rb") as f:
        got = f.read()
    with open(expected_file, "rb") as f:
        want = f.read()
    if got != want:
        print(f"{name}: downloaded bytes differ from {expected_file}", file=sys.stderr)
        return 1
    trusted = updater._trusted_set  # the versions ngclient now trusts, for the test's checks
    print(
        json.dumps(
            {
                "custom": info.custom,
                "length": info.length,
                "root_version": trusted.root.version,
                "timestamp_version": trusted.timestamp.version,
                "snapshot_version": trusted.snapshot.version,
                "targets_version": trusted.targets.version,
            }
        )
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # report any refusal as one line with its type
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
