# Fleet updates: `ksplice update` from a TUF repository the host serves on its
# loopback, reached only through QEMU's restricted user-mode networking.
#
# The host published the repository in this order, one copy per state, under $MIRROR:
#   a/        level 1 of stream $STREAM ($ID1: cmdline-string)
#   wave/     level 2 ($ID2: cmdline-string + proc-version, cumulative) in a
#             rollout wave that starts in 30 days for every host
#   b/        level 2 released to every host
#   replay/   a/'s metadata again: a mirror replaying an old snapshot
#   expired/  after b/, a timestamp that expired seconds after it was signed
. /ksplice/lib.sh
cmdline_fixed() { sh /ksplice/tests/cmdline-string-LOADED.test; }
version_fixed() { sh /ksplice/tests/proc-version-LOADED.test; }
mirror() {
	printf 'mirrors = ["%s/%s/"]\nauto = true\n' "$MIRROR" "$1" > /etc/ksplice/client.toml
	chmod 0644 /etc/ksplice/client.toml
}
live() { livepatches | sort | tr '\n' ' '; }
transitions() { dmesg | grep -c "$1"; }
M1=ksplice_$(echo "$ID1" | tr - _)
M2=ksplice_$(echo "$ID2" | tr - _)

step net-up net_up
echo 5f1d9b3c2a7e4d6f8091a2b3c4d5e6f7 > /etc/machine-id
cp "$ROOT_JSON" /etc/ksplice/root.json && chmod 0644 /etc/ksplice/root.json
step unchanged-before kernel_unchanged
step cmdline-unfixed-before sh -c '! sh /ksplice/tests/cmdline-string-LOADED.test'

mirror a
exits_with check-level1 1 "$ID1" ksplice update --check
step check-changed-nothing kernel_unchanged
exits_with update-level1 11 "$ID1" ksplice update
step level1-cmdline-fixed cmdline_fixed
step level1-version-unfixed sh -c '! sh /ksplice/tests/proc-version-LOADED.test'
expect_eq level1-live "$M1 " "$(live)"
exits_with up-to-date 0 "" ksplice update

mirror wave
exits_with wave-not-started 0 "wave" ksplice update
expect_eq wave-still-level1 "$M1 " "$(live)"

mirror b
# Counted from here: other scenarios of the boot (cumulative-replace) use the same ids.
before=$(transitions "starting patching transition")
unpatch_before=$(transitions "'$M1': starting unpatching transition")
exits_with update-level2 11 "$ID2" ksplice update
step level2-cmdline-fixed cmdline_fixed
step level2-version-fixed version_fixed
expect_eq level2-replaced-level1 "$M2 " "$(live)"
expect_eq one-replace-transition 1 "$(($(transitions "starting patching transition") - before))"
expect_eq no-unpatching-of-level1 0 "$(($(transitions "'$M1': starting unpatching transition") - unpatch_before))"
step uname-effective sh -c "ksplice uname -r | grep -F '$(uname -r)' | grep -F '$STREAM'"

mirror replay
exits_with replayed-snapshot-refused 3 "" ksplice update
expect_eq replay-changed-nothing "$M2 " "$(live)"
mirror expired
exits_with expired-timestamp-refused 3 "expired" ksplice update
expect_eq expired-changed-nothing "$M2 " "$(live)"

step undo-level2 ksplice undo "$ID2"
expect_eq back-to-level1 "$M1 " "$(live)"
step back-cmdline-fixed cmdline_fixed
step back-version-unfixed sh -c '! sh /ksplice/tests/proc-version-LOADED.test'
step undo-level1 ksplice undo "$ID1"
step unchanged-after kernel_unchanged
