# An update to a module (module.patch: xfs) applied before the module loads: livepatch
# patches xfs as it loads. Then undo, and apply again with xfs already loaded.
. /ksplice/lib.sh
ID=$(basename "$PKG" .tar.gz)
ID=${ID#ksplice-}
xfs_patched() { grep -q kpatch /sys/fs/xfs/stats/stats; }
xfs_original() { [ -e /sys/fs/xfs/stats/stats ] && ! grep -q kpatch /sys/fs/xfs/stats/stats; }
step unchanged-before kernel_unchanged
# patch-module's test loads xfs and leaves it loaded.
if grep -q "^xfs " /proc/modules; then step unload-xfs-first modprobe -r xfs; fi
step xfs-not-loaded sh -c '! grep -q "^xfs " /proc/modules'
step apply-before-xfs ksplice apply "$PKG"
step load-xfs-after modprobe xfs
step xfs-patched-on-load xfs_patched
step undo ksplice undo "$ID"
step xfs-original xfs_original
step apply-xfs-loaded ksplice apply "$PKG"
step xfs-patched xfs_patched
step undo-again ksplice undo "$ID"
step xfs-original-again xfs_original
step unload-xfs modprobe -r xfs
step unchanged-after kernel_unchanged
