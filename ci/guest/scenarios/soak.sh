# Soak: SOAK_CYCLES cycles of two stacked updates, cmdline-string ($PKG, cmdline_proc_show)
# and syscall ($PKG2, newuname), applied and undone while the guest is busy:
# - a CPU-bound loop, so transitions happen with every CPU busy;
# - a reader that reads /proc/cmdline over and over without forking (the shell's
#   `read`), so a task is inside the patched cmdline_proc_show, or about to enter it,
#   whenever a transition runs; every line it reads must be the old or the new text;
# - a uname(2) caller (patched newuname) racing a sethostname(2) loop, which takes the
#   uts_sem newuname sleeps on: the caller sleeps inside the patched function, its
#   stack fails the transition's check and it is switched on its way out.
# Every cycle is one step marker (with its duration); the kernel log must stay clean
# (init checks it after the scenario); cycles per minute are reported as a metric.
. /ksplice/lib.sh
id_of() { _i=$(basename "$1" .tar.gz); echo "${_i#ksplice-}"; }
ID1=$(id_of "$PKG")
ID2=$(id_of "$PKG2")
CYCLES=${SOAK_CYCLES:-50}

step unchanged-before kernel_unchanged
# The load must not outlive the scenario, whichever way it ends (a failed step exits).
load_pids=
trap 'kill $load_pids 2>/dev/null' EXIT
trap 'exit 1' TERM INT
echo 0 > /tmp/soak.reads
rm -f /tmp/soak.bad
# The load runs at nice 19: it keeps every CPU busy and the patched functions in use,
# but does not starve the client, whose verification would otherwise dominate a cycle.
# The reader keeps the line as read (IFS=): the command line ends in a space.
export RAW
RAW=$(cat /proc/cmdline)
# load CMD: start CMD in the background at nice 19 (busybox has renice, not nice).
load() {
	sh -c "$1" &
	load_pids="$load_pids $!"
	renice -n 19 -p $! > /dev/null
}
load 'while :; do :; done'
load '
	n=0
	while :; do
		IFS= read -r line < /proc/cmdline
		n=$((n + 1))
		case "$line" in
		"$RAW" | "$RAW kpatch=1") ;;
		*) echo "$line" >> /tmp/soak.bad ;;
		esac
		[ $((n % 20)) -eq 0 ] && echo "$n" > /tmp/soak.reads
	done'
load 'while :; do uname -s > /dev/null; done'
load 'while :; do hostname soak; done'

uname_patched() { uname -s | grep -q '\.kpatch$'; }
cmdline_patched() { grep -q ' kpatch=1$' /proc/cmdline; }
# timed CMD...: run CMD and say how long it took (the cycle's output shows where time goes).
timed() {
	_a=$(now)
	"$@"
	_r=$?
	echo "  $2 took $(awk "BEGIN { printf \"%.1f\", $(now) - $_a }") s"
	return $_r
}
cycle() {
	timed ksplice apply "$PKG" && cmdline_patched &&
		timed ksplice apply "$PKG2" && uname_patched &&
		timed ksplice undo "$ID2" && ! uname_patched && cmdline_patched &&
		timed ksplice undo "$ID1" && ! cmdline_patched && kernel_unchanged
}
t0=$(now)
i=1
while [ $i -le "$CYCLES" ]; do
	step "cycle-$i" cycle
	i=$((i + 1))
done
t1=$(now)
kill $load_pids
wait 2>/dev/null
load_pids=
# The count may have been cut short by the kill; every unexpected line is in soak.bad.
read -r reads < /tmp/soak.reads
bad=0
[ -f /tmp/soak.bad ] && bad=$(wc -l < /tmp/soak.bad) && sed 's/^/  unexpected: /' /tmp/soak.bad
echo "  reader: about ${reads:-?} reads of /proc/cmdline during the soak, $bad unexpected"
expect_eq reader-saw-only-old-or-new 0 "$bad"
rate=$(awk "BEGIN { printf \"%.2f\", $CYCLES * 60 / ($t1 - $t0) }")
echo "@@KSPLICE scenario=$SCENARIO event=metric name=cycles-per-minute value=$rate"
echo "@@KSPLICE scenario=$SCENARIO event=metric name=soak-seconds value=$(awk "BEGIN { printf \"%.0f\", $t1 - $t0 }")"
step unchanged-after kernel_unchanged
