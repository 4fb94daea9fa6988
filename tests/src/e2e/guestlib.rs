//! Host tests of the guest's shell helpers (ci/guest/lib.sh), run with busybox sh as in the guest.

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use std::path::PathBuf;
    use std::process::Command;

    fn lib() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ci/guest/lib.sh")
    }

    /// Runs dmesg_clean with a fake `dmesg -r` whose output is `before` then `new`.
    fn dmesg_clean(new: &str, allow: &str) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let before = "<6>[    0.1] Linux version 6.1.0\n<6>[    0.2] Run /init\n";
        std::fs::write(dir.path().join("before"), before).unwrap();
        std::fs::write(dir.path().join("after"), format!("{before}{new}")).unwrap();
        let script = format!(
            ". '{}'; dmesg() {{ cat '{d}/after'; }}; dmesg_clean '{d}/before' '{allow}'",
            lib().display(),
            d = dir.path().display()
        );
        let st = Command::new("busybox")
            .args(["sh", "-c", &script])
            .env("KSPLICE_TMP", dir.path())
            .output()
            .expect("busybox (package busybox-static) runs");
        st.status.success()
    }

    #[test]
    fn ordinary_livepatch_messages_are_clean() {
        assert!(dmesg_clean(
            "<4>[    2.0] livepatch_sample: loading out-of-tree module taints kernel.\n\
             <5>[    2.0] livepatch_sample: module verification failed: signature and/or required key missing - tainting kernel\n\
             <6>[    2.1] livepatch: enabling patch 'livepatch_sample'\n",
            ""
        ));
    }

    #[test]
    fn oops_warning_and_errors_are_caught() {
        assert!(!dmesg_clean("<4>[    3.0] Call Trace:\n", ""));
        assert!(!dmesg_clean(
            "<0>[    3.0] BUG: kernel NULL pointer dereference\n",
            ""
        ));
        assert!(!dmesg_clean(
            "<4>[    3.0] WARNING: CPU: 0 PID: 1 at x.c:1\n",
            ""
        ));
        assert!(!dmesg_clean(
            "<3>[    3.0] livepatch: symbol 'x' not found in symbol table\n",
            ""
        ));
        assert!(!dmesg_clean(
            "<4>[    3.0] livepatch: failed to enable patch 'x'\n",
            ""
        ));
    }

    /// Issue 9, finding 4: a clean apply and undo of an update whose name contains
    /// "error" (or "fail") was reported as a kernel-log failure, because any line
    /// with those words after `livepatch:` was flagged. These are the kernel's real
    /// progress messages (kernel/livepatch/core.c, transition.c) for such a name.
    #[test]
    fn progress_messages_of_a_patch_named_error_are_clean() {
        let name = "ksplice_0001_scsi_error";
        for line in [
            format!("<5>[    4.0] livepatch: enabling patch '{name}'\n"),
            format!("<5>[    4.0] livepatch: '{name}': starting patching transition\n"),
            format!("<5>[    4.5] livepatch: '{name}': patching complete\n"),
            format!("<5>[    5.0] livepatch: '{name}': starting unpatching transition\n"),
            format!("<5>[    5.5] livepatch: '{name}': unpatching complete\n"),
            "<5>[    6.0] livepatch: 'ksplice_fix_failover': patching complete\n".into(),
            format!("<5>[    6.1] livepatch: applying patch '{name}' to loading module 'xfs'\n"),
            format!("<5>[    6.2] livepatch: reverting patch '{name}' on unloading module 'xfs'\n"),
        ] {
            assert!(dmesg_clean(&line, ""), "{line}");
        }
    }

    /// The other half of finding 4: the kernel's real livepatch failure messages
    /// (pr_warn and pr_err formats of kernel/livepatch/*.c) are still caught,
    /// whatever the patch is called.
    #[test]
    fn real_livepatch_failures_are_caught() {
        for line in [
            "<4>[    3.0] livepatch: failed to enable patch 'ksplice_a'\n",
            "<4>[    3.0] livepatch: pre-patch callback failed for object 'vmlinux'\n",
            "<4>[    3.0] livepatch: failed to patch object 'xfs'\n",
            "<4>[    3.0] livepatch: failed to apply patch 'ksplice_a' to module 'xfs' (-22)\n",
            "<4>[    3.0] livepatch: patch 'ksplice_a' failed for module 'xfs', refusing to load module 'xfs'\n",
            "<4>[    3.0] livepatch: forcing remaining tasks to the patched state\n",
            "<3>[    3.0] livepatch: failed to set ftrace filter for function 'f' (-22)\n",
            "<3>[    3.0] livepatch: kallsyms size lookup failed for 'f'\n",
            "<3>[    3.0] livepatch: symbol 'x' not found in symbol table\n",
        ] {
            assert!(!dmesg_clean(line, ""), "{line}");
        }
    }

    #[test]
    fn allowed_errors_pass_only_when_allowed() {
        let line = "<3>[    3.0] ksplice_a: run-pre: mismatch in f+0x5: expected 52 found 53\n";
        assert!(!dmesg_clean(line, ""));
        assert!(dmesg_clean(line, "ksplice_a:.run-pre"));
        assert!(!dmesg_clean(line, "ksplice_b:.run-pre"));
    }
}
