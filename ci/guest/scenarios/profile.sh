# Capture the target profile the way an admin would: `ksplice profile` on the running (unmodified) kernel.
# Until `ksplice profile` exists (HAVE_PROFILE=0) only the identity is recorded.
. /ksplice/lib.sh
mkdir -p /tmp/p
if [ "$HAVE_PROFILE" = 1 ]; then
	step profile ksplice profile /tmp/p
	step has-system-map test -s /tmp/p/System.map
	step has-config test -s /tmp/p/config
fi
[ -f /tmp/p/release ] || uname -r > /tmp/p/release
[ -f /tmp/p/version ] || uname -v > /tmp/p/version
[ -f /tmp/p/arch ] || uname -m > /tmp/p/arch
cp /sys/kernel/notes /tmp/p/.notes
step pack tar -C /tmp/p -czf /tmp/profile.tgz .
echo "@@KSPLICE-BLOB begin name=profile"
base64 /tmp/profile.tgz
echo "@@KSPLICE-BLOB end name=profile"
