# The kernel's own samples/livepatch/livepatch-sample.ko: insmod, /proc/cmdline changes, disable via sysfs, rmmod.
. /ksplice/lib.sh
before=$(cat /proc/cmdline)
step unchanged-before kernel_unchanged
step apply insmod "$PKG"
step patched wait_for 30 '[ "$(cat /sys/kernel/livepatch/livepatch_sample/transition 2>/dev/null)" = 0 ]'
expect_eq cmdline-patched "this has been live patched" "$(cat /proc/cmdline)"
step undo sh -c 'echo 0 > /sys/kernel/livepatch/livepatch_sample/enabled'
step unpatched wait_for 30 '[ ! -d /sys/kernel/livepatch/livepatch_sample ]'
expect_eq cmdline-restored "$before" "$(cat /proc/cmdline)"
step rmmod rmmod livepatch_sample
step unchanged-after kernel_unchanged
