# The sample module shipped as a signed ksplice package: apply, view, status, undo through the client.
. /ksplice/lib.sh
before=$(cat /proc/cmdline)
step unchanged-before kernel_unchanged
step verify ksplice verify "$PKG"
step apply ksplice apply "$PKG"
expect_eq cmdline-patched "this has been live patched" "$(cat /proc/cmdline)"
expect_eq livepatch-enabled 1 "$(cat /sys/kernel/livepatch/livepatch_sample/enabled)"
step view ksplice view
step view-lists-update sh -c "ksplice view | grep -F '$ID'"
step status ksplice status
step undo ksplice undo "$ID"
expect_eq cmdline-restored "$before" "$(cat /proc/cmdline)"
step unchanged-after kernel_unchanged
step view-after sh -c 'ksplice view | grep -Fx "no updates installed"'
