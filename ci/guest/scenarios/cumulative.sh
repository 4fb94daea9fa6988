# A cumulative stream ($STREAM): level 1 ($PKG: cmdline-string) then level 2 ($PKG2:
# cmdline-string + proc-version, --replaces level 1). Applying level 2 is one replace
# transition (level 1's patch gone, its module unloaded, kept installed); undoing level 2
# loads level 1 again, one transition back; undoing level 1 removes the stream.
. /ksplice/lib.sh
T=/ksplice/tests
L1=$STREAM-1
L2=$STREAM-2
M1=$(echo "ksplice_$L1" | tr - _)
M2=$(echo "ksplice_$L2" | tr - _)
cmdline_on() { sh $T/cmdline-string-LOADED.test; }
cmdline_off() { ! sh $T/cmdline-string-LOADED.test; }
version_on() { sh $T/proc-version-LOADED.test; }
version_off() { ! sh $T/proc-version-LOADED.test; }
one_line() { tr '\n' ' ' | sed 's/ $//'; }
# mark FILE: remember the kernel log so far; since FILE: the kernel log after it.
mark() { dmesg > "$1"; }
since() { dmesg | tail -n +$(($(wc -l < "$1") + 1)); }
# transitions FILE: the livepatch transitions started since FILE, one a line.
transitions() { since "$1" | grep -oE "'[a-z0-9_]+': starting (un)?patching transition" | sed "s/^'//; s/': starting / /; s/ transition\$//"; }
dmesg -r > /tmp/dmesg.before

step unchanged-before kernel_unchanged
step cmdline-off-before cmdline_off
step version-off-before version_off
step uname-before sh -c 'test "$(ksplice uname -r)" = "$(uname -r)"'

step apply-level-1 ksplice apply "$PKG"
step cmdline-on-1 cmdline_on
step version-off-1 version_off
expect_eq live-1 "$M1" "$(livepatches | one_line)"
step uname-1 sh -c "test \"\$(ksplice uname -r)\" = \"\$(uname -r)+ksplice.$STREAM.1\""

mark /tmp/dmesg.l2
step apply-level-2 ksplice apply "$PKG2"
step cmdline-on-2 cmdline_on
step version-on-2 version_on
expect_eq one-replace-transition "$M2 patching" "$(transitions /tmp/dmesg.l2 | one_line)"
expect_eq live-2-only "$M2" "$(livepatches | one_line)"
expect_eq module-1-unloaded "$M2" "$(livepatch_modules | one_line)"
step view-superseded sh -c "ksplice view | grep -xF '$L1: superseded' && ksplice view | grep -xF '$L2: applied'"
# Other scenarios of the same boot may leave packages installed: only this stream's parts.
step status-line sh -c "ksplice status | grep -F \"effective kernel \$(uname -r)+ksplice.$STREAM.2: \""
step status-json sh -c "ksplice status --json | grep -F '\"format\":1' | grep -F '\"superseded\":[\"$L1\"]'"
step uname-2 sh -c "test \"\$(ksplice uname -r)\" = \"\$(uname -r)+ksplice.$STREAM.2\""

mark /tmp/dmesg.u2
step undo-level-2 ksplice undo "$L2"
step cmdline-on-back cmdline_on
step version-off-back version_off
expect_eq one-transition-back "$M1 patching" "$(transitions /tmp/dmesg.u2 | one_line)"
expect_eq live-1-again "$M1" "$(livepatches | one_line)"
expect_eq module-2-unloaded "$M1" "$(livepatch_modules | one_line)"
step view-level-1 sh -c "ksplice view | grep -xF '$L1: applied' && ! ksplice view | grep -F '$L2'"

mark /tmp/dmesg.u1
step undo-level-1 ksplice undo "$L1"
step cmdline-off-after cmdline_off
step version-off-after version_off
expect_eq unpatch-transition "$M1 unpatching" "$(transitions /tmp/dmesg.u1 | one_line)"
step unchanged-after kernel_unchanged
step stream-removed sh -c "! ksplice view | grep -F '$STREAM-'"
step dmesg-clean dmesg_clean /tmp/dmesg.before
