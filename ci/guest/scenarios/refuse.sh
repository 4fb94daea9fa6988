# A package the client must refuse ($WHY), with the exact text in expect next to it, and an unchanged kernel.
. /ksplice/lib.sh
expect=$(cat "$(dirname "$PKG")/expect")
before=$(cat /proc/cmdline)
step unchanged-before kernel_unchanged
refused refuse "$expect" ksplice apply "$PKG"
step unchanged-after kernel_unchanged
expect_eq cmdline-unchanged "$before" "$(cat /proc/cmdline)"
step nothing-installed sh -c 'ksplice view | grep -Fx "no updates installed"'
