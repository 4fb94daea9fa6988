# The README demo: /proc/cmdline before, ksplice apply, after, ksplice undo, after again.
. /ksplice/lib.sh
ID=$(basename "$PKG" .tar.gz)
ID=${ID#ksplice-}
echo
echo "== running kernel: $(uname -r) $(uname -v)"
echo "== live patches loaded: $(livepatches | tr '\n' ' ')"
before=$(cat /proc/cmdline)
echo "== cat /proc/cmdline (before):"
echo "   $before"
echo "== ksplice apply $(basename "$PKG")"
step apply ksplice apply "$PKG"
echo "== cat /proc/cmdline (after apply, no reboot):"
echo "   $(cat /proc/cmdline)"
step changed test "$(cat /proc/cmdline)" != "$before"
echo "== ksplice view"
step view ksplice view
echo "== ksplice undo $ID"
step undo ksplice undo "$ID"
echo "== cat /proc/cmdline (after undo):"
echo "   $(cat /proc/cmdline)"
expect_eq restored "$before" "$(cat /proc/cmdline)"
echo
