#!/bin/bash
# `make demo-vagrant`: the 3-node Vagrant cluster as a user brings it up, from a channel
# served on this machine. `make demo-vagrant-down` removes it again.
#
#   build the image and its libvirt box (once)  ->  a channel repository, the release and
#   its box published to alpha  ->  libvirt (started in netns tidehost-libvirt where no
#   systemd runs it)  ->  the channel served where vagrant and the guests reach it  ->
#   tidehost vagrant init --nodes 3  ->  vagrant up  ->  etcd and the swarm from node1
#
# Where libvirtd runs as a service (systemd), set HOST to an address of this machine that
# the guests reach (e.g. its LAN address); on a machine without systemd the defaults work.
# Three TCG nodes on 2 cores take a long while (one node: 326-399 s); NODES=1 is quicker.
set -euo pipefail
T=${TIDEHOST:-$PWD/.venv/bin/tidehost}
OUT=${OUT:-$PWD/build/vagrant-demo}   # libvirt's QEMU must be able to enter this folder
NODES=${NODES:-3}
VERSION=${VERSION:-1.0.0}
PORT=${PORT:-8080}
NETNS=tidehost-libvirt
say() { printf '\n== %s\n' "$*"; }

if [ "${1:-up}" = down ]; then
	say "vagrant destroy -f, the channel server, libvirt"
	pre=(); ip netns list 2>/dev/null | grep -qw "$NETNS" && pre=(ip netns exec "$NETNS")
	[ -f "$OUT/cluster/Vagrantfile" ] && (cd "$OUT/cluster" && "${pre[@]}" vagrant destroy -f)
	[ -f "$OUT/serve.pid" ] && kill "$(cat "$OUT/serve.pid")" 2>/dev/null || true
	rm -f "$OUT/serve.pid"
	"$T" vagrant libvirt stop
	exit 0
fi

mkdir -p "$OUT"
chmod o+x "$OUT"
box="$OUT/out/tidehost-$VERSION-vagrant-libvirt.box"
if [ ! -f "$box" ]; then
	say "tidehost build (raw, qcow2 and the vagrant-libvirt box)"
	"$T" build --version "$VERSION" --channel alpha --format raw,qcow2,vagrant-libvirt -o "$OUT/out"
fi

say "libvirt"
"$T" vagrant libvirt start
pre=(); host=${HOST:-}
if ip netns list 2>/dev/null | grep -qw "$NETNS"; then
	pre=(ip netns exec "$NETNS"); host=${host:-192.168.120.1}
fi
[ -n "$host" ] || { echo "set HOST to an address of this machine the guests reach" >&2; exit 2; }
url="http://$host:$PORT/"

if [ ! -d "$OUT/repo" ]; then
	say "a channel repository, the release and its box on alpha"
	"$T" channel init "$OUT/repo"
	"$T" channel publish "$OUT/repo" "$OUT/out/tidehost-$VERSION.release" --channel alpha \
		--box-url-base "$url"
fi

say "the channel served at $url"
if ! { [ -f "$OUT/serve.pid" ] && kill -0 "$(cat "$OUT/serve.pid")" 2>/dev/null; }; then
	setsid "${pre[@]}" "$T" channel serve "$OUT/repo" --bind "$host" --port "$PORT" \
		> "$OUT/serve.log" 2>&1 &
	echo $! > "$OUT/serve.pid"
	sleep 2
fi

say "tidehost vagrant init --nodes $NODES"
"${pre[@]}" "$T" vagrant init --nodes "$NODES" --channel-url "$url" --channel alpha -o "$OUT/cluster"

say "vagrant up (${pre[*]:-here})"
cd "$OUT/cluster"
start=$(date +%s)
"${pre[@]}" vagrant up
echo "vagrant up: $(( $(date +%s) - start )) s for $NODES node(s)"

say "the cluster, from node1"
"${pre[@]}" vagrant ssh node1 -c 'cloud-init status --wait >/dev/null;
	sudo /etc/tidehost/bin/tidehost-etcdctl endpoint health --cluster; sudo docker node ls;
	sudo tidehost-update status'
echo
echo "vagrant ssh: cd $OUT/cluster && ${pre[*]} vagrant ssh node2"
echo "remove it:   make demo-vagrant-down"
