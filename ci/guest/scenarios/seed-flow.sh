# The seed's flow in the guest: `ksplice-apply ksplice-*.tar.gz`, then ksplice-view and ksplice-undo.
. /ksplice/lib.sh
cd "$(dirname "$PKG")" || exit 1
ID=$(basename "$PKG" .tar.gz)
ID=${ID#ksplice-}
not_loaded_test() { ! sh "$TEST"; }
step unchanged-before kernel_unchanged
step test-fails-before not_loaded_test
step apply sh -c 'ksplice-apply ksplice-*.tar.gz'
step test-passes-applied sh "$TEST"
step view ksplice-view
step undo ksplice-undo "$ID"
step test-fails-after-undo not_loaded_test
step unchanged-after kernel_unchanged
