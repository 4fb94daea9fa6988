# Helpers for guest scenario scripts: steps with markers, expectations, kernel-state checks.
#
# Every check prints one `@@KSPLICE scenario=... event=step ...` marker; a failed
# check exits the scenario script (it runs in its own shell), so the first
# failure is the one reported.

now() { cut -d' ' -f1 /proc/uptime; }

# _run CMD...: run CMD with its output in /tmp/step.out (shown indented); sets
# _rc (its exit status), _t1 (when it ended) and _dur (seconds it took).
_run() {
	_t0=$(now)
	"$@" > /tmp/step.out 2>&1
	_rc=$?
	_t1=$(now)
	sed 's/^/  | /' /tmp/step.out
	_dur=$(awk "BEGIN { printf \"%.2f\", $_t1 - $_t0 }")
}

# step NAME CMD...: run CMD, show its output, pass if it exits 0.
step() {
	_name=$1
	shift
	_run "$@"
	if [ $_rc -eq 0 ]; then
		echo "@@KSPLICE scenario=$SCENARIO event=step step=$_name result=ok rc=0 dur=$_dur t=$_t1"
	else
		echo "@@KSPLICE scenario=$SCENARIO event=step step=$_name result=fail rc=$_rc dur=$_dur t=$_t1"
		exit 1
	fi
}

# refused NAME TEXT CMD...: CMD must fail and its output must contain TEXT exactly.
refused() {
	_name=$1
	_text=$2
	shift 2
	_run "$@"
	if [ $_rc -ne 0 ] && grep -qF -- "$_text" /tmp/step.out; then
		echo "@@KSPLICE scenario=$SCENARIO event=step step=$_name result=ok rc=$_rc dur=$_dur t=$_t1"
	else
		echo "  expected failure with: $_text"
		echo "@@KSPLICE scenario=$SCENARIO event=step step=$_name result=fail rc=$_rc dur=$_dur t=$_t1"
		exit 1
	fi
}

# expect_eq NAME EXPECTED ACTUAL
expect_eq() {
	if [ "$2" = "$3" ]; then
		echo "@@KSPLICE scenario=$SCENARIO event=step step=$1 result=ok rc=0 dur=0 t=$(now)"
	else
		echo "  expected: '$2'"
		echo "  actual:   '$3'"
		echo "@@KSPLICE scenario=$SCENARIO event=step step=$1 result=fail rc=1 dur=0 t=$(now)"
		exit 1
	fi
}

# wait_for SECONDS CONDITION: poll a shell condition every 0.2 s.
wait_for() {
	_n=$(($1 * 5))
	while [ $_n -gt 0 ]; do
		eval "$2" && return 0
		sleep 0.2
		_n=$((_n - 1))
	done
	echo "  timed out waiting for: $2"
	return 1
}

# The names of enabled or transitioning live patches, one a line (empty when none).
livepatches() {
	ls /sys/kernel/livepatch 2>/dev/null
}

# Live-patch modules still loaded (any module with the livepatch taint flag K).
livepatch_modules() {
	awk '$NF ~ /^\(.*K.*\)$/ { print $1 }' /proc/modules
}

# unchanged: no live patch registered and no live-patch module loaded.
kernel_unchanged() {
	[ -z "$(livepatches)" ] && [ -z "$(livepatch_modules)" ]
}

# dmesg_clean BEFORE_FILE [ALLOW_REGEX]: no oops, warning, trace, livepatch error or other
# KERN_ERR-or-worse message since BEFORE_FILE (written by `dmesg -r`, which keeps the levels),
# but the exact lines of $KSPLICE_TMP/dmesg.expected.
#
# Livepatch problems are told by level, not by words: every failure message of the
# kernel's livepatch core (kernel/livepatch/*.c, prefix "livepatch: ") is pr_err or
# pr_warn ("failed to enable patch '%s'", "pre-patch callback failed for object '%s'",
# "failed to apply patch '%s' to module '%s' (%d)", "forcing remaining tasks to the
# patched state", ...), and its progress messages are pr_notice or pr_info
# ("enabling patch '%s'", "'%s': starting patching transition", "'%s': patching
# complete"). Those name the patch, so words in a patch name ("..._scsi_error") say nothing.
dmesg_clean() {
	_T=${KSPLICE_TMP:-/tmp}
	dmesg -r > "$_T"/dmesg.after
	_n=$(wc -l < "$1")
	tail -n +$((_n + 1)) "$_T"/dmesg.after > "$_T"/dmesg.new
	grep -E '^<[0-3]>|Call Trace|BUG|WARNING:|^<4>(\[[^]]*\] ?)?livepatch: ' "$_T"/dmesg.new > "$_T"/dmesg.bad
	if [ -n "$2" ]; then
		grep -vE "$2" "$_T"/dmesg.bad > "$_T"/dmesg.bad2
		mv "$_T"/dmesg.bad2 "$_T"/dmesg.bad
	fi
	# Exact lines a scenario recorded as not its own (what a driver that could not
	# load in this guest logged, with no update applied): see coverage.sh.
	if [ -s "$_T"/dmesg.expected ]; then
		grep -vxFf "$_T"/dmesg.expected "$_T"/dmesg.bad > "$_T"/dmesg.bad2
		mv "$_T"/dmesg.bad2 "$_T"/dmesg.bad
	fi
	if [ -s "$_T"/dmesg.bad ]; then
		echo "!! kernel log has errors:"
		sed 's/^/  ! /' "$_T"/dmesg.bad
		echo "   in:"
		sed 's/^/  | /' "$_T"/dmesg.new
		return 1
	fi
	return 0
}

# cleanup_livepatches: disable and unload whatever a scenario left; fails if there was anything.
cleanup_livepatches() {
	kernel_unchanged && return 0
	for p in $(livepatches); do
		echo 0 > /sys/kernel/livepatch/"$p"/enabled 2>/dev/null
	done
	wait_for 30 '[ -z "$(livepatches)" ]'
	for m in $(livepatch_modules); do
		rmmod "$m"
	done
	return 1
}

# net_up: bring up the NIC a fleet scenario gets (QEMU user-mode networking with
# restrict=on: the only reachable address is the host's loopback mirror, $MIRROR).
# Idempotent, so several fleet scenarios can share one boot.
net_up() {
	grep -q '^e1000 ' /proc/modules || modprobe e1000 || return 1
	wait_for 30 '[ -e /sys/class/net/eth0 ]' || return 1
	ip link set lo up
	ip link set eth0 up
	ip -4 addr show dev eth0 | grep -q 10.0.2.15/ || ip addr add 10.0.2.15/24 dev eth0
}

# exits_with NAME CODE TEXT CMD...: CMD must exit with CODE and its output contain
# TEXT (empty TEXT: any output). For commands whose success has several codes.
exits_with() {
	_name=$1
	_code=$2
	_text=$3
	shift 3
	_run "$@"
	if [ $_rc -eq "$_code" ] && { [ -z "$_text" ] || grep -qF -- "$_text" /tmp/step.out; }; then
		echo "@@KSPLICE scenario=$SCENARIO event=step step=$_name result=ok rc=$_rc dur=$_dur t=$_t1"
	else
		echo "  expected exit $_code${_text:+ with: $_text}"
		echo "@@KSPLICE scenario=$SCENARIO event=step step=$_name result=fail rc=$_rc dur=$_dur t=$_t1"
		exit 1
	fi
}
