# Stacked updates of one function: cmdline-string ($PKG, " kpatch=1") below cmdline-stack
# ($PKG2, " kstack=2"). The top of the stack wins; undoing it brings the lower one back.
. /ksplice/lib.sh
id_of() { _i=$(basename "$1" .tar.gz); echo "${_i#ksplice-}"; }
LOWER=$(id_of "$PKG")
UPPER=$(id_of "$PKG2")
cmdline_ends() { case "$(cat /proc/cmdline)" in *"$1") return 0 ;; esac; return 1; }
original() { ! grep -qE 'kpatch=1|kstack=2' /proc/cmdline; }
step unchanged-before kernel_unchanged
step original-before original
step apply-lower ksplice apply "$PKG"
step lower-active cmdline_ends " kpatch=1"
step apply-upper ksplice apply "$PKG2"
step upper-wins cmdline_ends " kstack=2"
expect_eq both-live "$(printf '%s\n' "ksplice_$LOWER" "ksplice_$UPPER" | tr - _ | sort | tr '\n' ' ')" \
	"$(livepatches | sort | tr '\n' ' ')"
step view-lists-both sh -c "ksplice view | grep -F '$LOWER: applied' && ksplice view | grep -F '$UPPER: applied'"
step undo-upper ksplice undo "$UPPER"
step lower-back cmdline_ends " kpatch=1"
step undo-lower ksplice undo "$LOWER"
step original-after original
step unchanged-after kernel_unchanged
