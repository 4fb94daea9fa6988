# The coverage tool's VM sample (ci/coverage, docs/coverage.md): each sampled update,
# built from one file of a real stable change, is applied, listed by `ksplice view` and
# undone, leaving no live patch and a clean kernel log; a module file's update twice,
# first with its module not loaded, then with it loaded (modprobe, dependencies from
# this release's modules). One metric per case, name=<id>.<case> value=ok|fail|noload,
# that `ksplice-build coverage report` counts; any failed case fails the scenario.
# Variables: COUNT, RELEASE, TRUST_TOML, DMESG_ALLOW (what the log checks allow: a
# sampled driver's missing firmware), and per update N: IDN, MODN (vmlinux or the
# module name), PKGN.
. /ksplice/lib.sh

expect_eq booted-release "$RELEASE" "$(uname -r)"
# The packages are signed by the coverage run's own key.
if [ -f /etc/ksplice/trust.toml ]; then cp /etc/ksplice/trust.toml /tmp/trust.toml.harness; fi
cp "$TRUST_TOML" /etc/ksplice/trust.toml && chmod 0644 /etc/ksplice/trust.toml

fails=0
metric() { echo "@@KSPLICE scenario=$SCENARIO event=metric name=$1 value=$2"; }

# one_case N ID PKG CASE: in a subshell, so a failing step ends this case only.
one_case() {
	(
		dmesg -r > /tmp/cov.before
		step "$1-$4-apply" ksplice apply "$3"
		step "$1-$4-view" sh -c "ksplice view | grep -F '$2: applied'"
		step "$1-$4-undo" ksplice undo "$2"
		step "$1-$4-unchanged" kernel_unchanged
		step "$1-$4-log-clean" dmesg_clean /tmp/cov.before "${DMESG_ALLOW:-}"
	)
	if [ $? -eq 0 ]; then
		metric "$2.$4" ok
	else
		metric "$2.$4" fail
		fails=$((fails + 1))
		# What a failed case left must not spoil the next one.
		cleanup_livepatches
	fi
}

i=1
while [ "$i" -le "$COUNT" ]; do
	eval "id=\$ID$i mod=\$MOD$i pkg=\$PKG$i"
	echo "  sample $i: $id ($mod)"
	if [ "$mod" = vmlinux ]; then
		one_case "$i" "$id" "$pkg" vmlinux
	else
		if grep -q "^$mod " /proc/modules; then modprobe -r "$mod"; fi
		if grep -q "^$mod " /proc/modules; then
			metric "$id.unloaded" noload
		else
			one_case "$i" "$id" "$pkg" unloaded
		fi
		dmesg -r > /tmp/cov.probe
		if modprobe "$mod" && grep -q "^$mod " /proc/modules; then
			one_case "$i" "$id" "$pkg" loaded
		else
			echo "  $mod does not load in this VM"
			# What the failed load logged ("dell_wmi_sysman: Unable to run on
			# non-Dell system") is this guest's hardware, with no update applied:
			# the scenario's whole-log check leaves out exactly those lines.
			dmesg -r | tail -n +$(($(wc -l < /tmp/cov.probe) + 1)) >> "${KSPLICE_TMP:-/tmp}"/dmesg.expected
			metric "$id.loaded" noload
		fi
	fi
	i=$((i + 1))
done

if [ -f /tmp/trust.toml.harness ]; then
	cp /tmp/trust.toml.harness /etc/ksplice/trust.toml
else
	rm /etc/ksplice/trust.toml
fi
expect_eq every-case-clean 0 "$fails"
