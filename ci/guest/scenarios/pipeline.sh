# The release pipeline's update, end to end: ci/pipeline ran .gitlab-ci.yml (plan, one
# job per kernel release, publish) and this boot runs that release's kernel ($RELEASE).
# The guest fetches the TUF repository the publish job signed, from $MIRROR, trusts the
# pipeline's package key ($TRUST_TOML), and `ksplice update` applies this release's top
# level $TOP (levels: $LEVELS; the two fixes of fixes/: cmdline-string, proc-version).
. /ksplice/lib.sh
live() { livepatches | sort | tr '\n' ' '; }
TOP_MODULE=ksplice_$(echo "$TOP" | tr - _)

expect_eq booted-release "$RELEASE" "$(uname -r)"
expect_eq both-fixes-built 2 "$LEVELS"
step net-up net_up
echo 3b9e0c1d2f4a5b6c7d8e9f0a1b2c3d4e > /etc/machine-id
cp "$ROOT_JSON" /etc/ksplice/root.json && chmod 0644 /etc/ksplice/root.json
# The boot's own policy (when the harness installed one) comes back at the end.
if [ -f /etc/ksplice/trust.toml ]; then cp /etc/ksplice/trust.toml /tmp/trust.toml.harness; fi
cp "$TRUST_TOML" /etc/ksplice/trust.toml && chmod 0644 /etc/ksplice/trust.toml
printf 'mirrors = ["%s/"]\nauto = true\n' "$MIRROR" > /etc/ksplice/client.toml
chmod 0644 /etc/ksplice/client.toml

step unchanged-before kernel_unchanged
step cmdline-unfixed-before sh -c '! sh /ksplice/tests/cmdline-string-LOADED.test'
step version-unfixed-before sh -c '! sh /ksplice/tests/proc-version-LOADED.test'
exits_with update-top-level 11 "$TOP" ksplice update
step cmdline-fixed sh /ksplice/tests/cmdline-string-LOADED.test
step version-fixed sh /ksplice/tests/proc-version-LOADED.test
expect_eq top-level-live "$TOP_MODULE " "$(live)"
exits_with up-to-date 0 "" ksplice update
step undo-top-level ksplice undo "$TOP"
step cmdline-unfixed-after sh -c '! sh /ksplice/tests/cmdline-string-LOADED.test'
step unchanged-after kernel_unchanged
# Later scenarios of the boot trust what they trusted before.
if [ -f /tmp/trust.toml.harness ]; then
	cp /tmp/trust.toml.harness /etc/ksplice/trust.toml
else
	rm /etc/ksplice/trust.toml
fi
