# Livepatch callbacks of macro-callbacks.patch ($PKG): each object's callbacks run in order
# (pre_patch, post_patch, pre_unpatch, post_unpatch); vmlinux's at apply and undo, joydev's
# when the module loads after the update; every pre_unpatch runs before any post_unpatch.
. /ksplice/lib.sh
ID=$(basename "$PKG" .tar.gz)
ID=${ID#ksplice-}
step unchanged-before kernel_unchanged
step joydev-not-loaded sh -c '! grep -q "^joydev " /proc/modules'
dmesg > /tmp/cb.before
step apply ksplice apply "$PKG"
step load-joydev-after modprobe joydev
step undo ksplice undo "$ID"
step unload-joydev rmmod joydev
dmesg | tail -n +$(($(wc -l < /tmp/cb.before) + 1)) |
	grep -oE '(pre|post)_(un)?patch_callback: [a-z0-9_]+' > /tmp/cb.log
sed 's/^/  | /' /tmp/cb.log
for obj in vmlinux joydev; do
	expect_eq "order-$obj" "pre_patch post_patch pre_unpatch post_unpatch" \
		"$(grep -E ": $obj\$" /tmp/cb.log | sed 's/_callback.*//' | tr '\n' ' ' | sed 's/ $//')"
done
last_pre=$(grep -n '^pre_unpatch' /tmp/cb.log | tail -n 1 | cut -d: -f1)
first_post=$(grep -n '^post_unpatch' /tmp/cb.log | head -n 1 | cut -d: -f1)
step pre-unpatch-before-post-unpatch test "${last_pre:-0}" -gt 0 -a "${last_pre:-0}" -lt "${first_post:-0}"
step unchanged-after kernel_unchanged
