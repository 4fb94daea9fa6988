# A package the client must refuse ($WHY), with the exact text in expect next to it, and an unchanged kernel.
. /ksplice/lib.sh
# expect holds one or more lines; the first is checked by `refused`, each must appear in the output.
expect=$(head -n1 "$(dirname "$PKG")/expect")
before=$(cat /proc/cmdline)
step unchanged-before kernel_unchanged
refused refuse "$expect" ksplice apply "$PKG"
cp /tmp/step.out /tmp/refusal.out
tail -n +2 "$(dirname "$PKG")/expect" | while IFS= read -r line || [ -n "$line" ]; do
	step "says:$(echo "$line" | tr ' ' '_' | cut -c1-40)" grep -qF -- "$line" /tmp/refusal.out || exit 1
done || exit 1
step unchanged-after kernel_unchanged
expect_eq cmdline-unchanged "$before" "$(cat /proc/cmdline)"
step nothing-installed sh -c 'ksplice view | grep -Fx "no updates installed"'
