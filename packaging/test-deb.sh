#!/usr/bin/env bash
# Build the .deb, install it with apt, and run the installed daemon with
# Debian's /usr/bin/python3 and Debian's python3-zmq, python3-configobj and
# python3-cryptography: check, serve a request through a node, reload,
# stop, find the man page.  Needs root and apt (CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)
export DEBIAN_FRONTEND=noninteractive

say() { printf '== %s\n' "$*"; }

say "installing build dependencies"
apt-get update -qq
apt-get install -y -qq debhelper dh-python python3-all python3-setuptools \
    build-essential man-db curl >/dev/null

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
say "building in $work"
mkdir -p "$work/blastbeat"
if git -C "$src" rev-parse >/dev/null 2>&1; then
    (cd "$src" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) |
        tar -xf - -C "$work/blastbeat"
else
    cp -a "$src/." "$work/blastbeat/"
fi
(cd "$work/blastbeat" && dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) || {
    tail -40 "$work/build.log"; exit 1; }
deb=$(ls "$work"/blastbeat_*_all.deb)
say "contents of $(basename "$deb")"
dpkg-deb -c "$deb" | awk '{print $6}'

say "installing with apt"
apt-get install -y -qq "$deb" >/dev/null
test -x /usr/sbin/blastbeat
test -f /usr/share/blastbeat/bb/server.py
test -f /lib/systemd/system/blastbeat.service
getent passwd blastbeat >/dev/null
dpkg-query -W -f='${Conffiles}\n' blastbeat | grep -q /etc/blastbeat.ini
man -w blastbeat
man -w blastbeat.ini
man -w blastbeat-protocol
head -1 /usr/sbin/blastbeat | grep -qx '#!/usr/bin/python3'

say "blastbeat -t /etc/blastbeat.ini with Debian's Python"
/usr/sbin/blastbeat -t /etc/blastbeat.ini
/usr/bin/python3 -c 'import zmq, configobj, cryptography; print("pyzmq", zmq.__version__, "configobj", configobj.__version__, "cryptography", cryptography.__version__)'

say "serving a request"
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
zport=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
conf="$work/test.ini"
cat >"$conf" <<INI
[blastbeat]
bind = 127.0.0.1:$port
zmq = tcp://127.0.0.1:$zport
uid = blastbeat
gid = blastbeat
ping-freq = 0.5
[blastbeat:localhost]
node = demo
INI
chmod 755 "$work"; chmod 644 "$conf"
/usr/sbin/blastbeat "$conf" 2>"$work/server.log" &
server=$!
/usr/bin/python3 -c "import sys; sys.path.insert(0, '/usr/share/blastbeat'); from bb.demo_node import main; main(['--connect', 'tcp://127.0.0.1:$zport'])" 2>"$work/node.log" &
for _ in $(seq 50); do grep -q "node demo is available" "$work/server.log" && break; sleep 0.1; done
reply=$(curl -s --max-time 5 "http://localhost:$port/packaged")
echo "$reply"
[ "$reply" = "Hello from BlastBeat node demo: GET /packaged" ]
grep -q "privileges dropped to uid blastbeat" "$work/server.log"

say "reload with SIGHUP"
printf 'alias = packaged.test\n' >>"$conf"
kill -HUP "$server"
for _ in $(seq 50); do grep -q "configuration reloaded" "$work/server.log" && break; sleep 0.1; done
grep -q "configuration reloaded" "$work/server.log"
curl -s --max-time 5 -H 'Host: packaged.test' "http://127.0.0.1:$port/again" | grep -q "GET /again"

say "stop with SIGTERM"
kill -TERM "$server"
status=0
wait "$server" || status=$?
[ "$status" -eq 0 ] || { cat "$work/server.log"; exit 1; }
cat "$work/server.log"

say "purging"
apt-get purge -y -qq blastbeat >/dev/null
say "packaging test passed"
