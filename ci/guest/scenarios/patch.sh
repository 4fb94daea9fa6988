# One ksplice-create update per test patch: its LOADED test fails before, passes after apply, fails after undo.
. /ksplice/lib.sh
ID=$(basename "$PKG" .tar.gz)
ID=${ID#ksplice-}
loaded_test() { sh "$TEST"; }
not_loaded_test() { ! sh "$TEST"; }
step unchanged-before kernel_unchanged
[ -n "$TEST" ] && step test-fails-before not_loaded_test
step apply ksplice apply "$PKG"
[ -n "$TEST" ] && step test-passes-applied loaded_test
step view-lists-update sh -c "ksplice view | grep -F '$ID: applied'"
step undo ksplice undo "$ID"
[ -n "$TEST" ] && step test-fails-after-undo not_loaded_test
step unchanged-after kernel_unchanged
