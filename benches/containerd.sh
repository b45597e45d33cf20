#!/usr/bin/env bash
# containerd on ocistore (`ocistore serve --containerd`) against containerd's own content
# store, side by side in one run on the same generated inputs:
#   fetch:  `ctr content fetch` of a generated ARCHIVE_MIB image from a loopback registry, into
#           (1) containerd's built-in content store,
#           (2) containerd's own local store behind a socket (the proxy baseline: ctdbench, a Go
#               program built from Debian's containerd 1.6.20 sources, content/local behind
#               its contentserver),
#           (3) ocistore serve on an empty root, and
#           (4) ocistore serve on a root that `ocistore image pull` already filled: the layers
#               are adopted, and the registry's access log shows whether any crossed the wire.
#   get:    `ctr content get` of a BLOB_MIB blob through (2) and (3) (ctr reads 32 KiB at a
#           time; each costs containerd an Info and a Read on the socket).
#   read:   the whole blob through containerd's proxy ReaderAt, 1 MiB reads (a Read call
#           each), and as one Read stream asked for all of it, straight at (2) and (3) (no
#           containerd in between); with the client's CPU time, which bounds both here.
# Prints medians and the ratios the README's containerd rows quote.
#
#   bash benches/containerd.sh       # ARCHIVE_MIB=200 BLOB_MIB=1024 RUNS=5 by default
set -euo pipefail
cd "$(dirname "$0")/.."
ARCHIVE_MIB=${ARCHIVE_MIB:-200}
BLOB_MIB=${BLOB_MIB:-1024}
RUNS=${RUNS:-5}

need=()
for t in containerd ctr skopeo hyperfine docker-registry curl go; do command -v "$t" >/dev/null || need+=("$t"); done
if ((${#need[@]})) || [ ! -d /usr/share/gocode/src/github.com/containerd/containerd ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update </dev/null >/dev/null
  apt-get install -y --no-install-recommends containerd skopeo hyperfine docker-registry curl \
    golang-go golang-github-containerd-containerd-dev </dev/null >/dev/null
fi

cargo build --release --quiet
BIN=$PWD/target/release/ocistore
W=$(mktemp -d "${TMPDIR:-/var/tmp}/ocistore-ctd.XXXXXX")
stop_all() {
  for p in "$W"/*/pid; do
    [ -f "$p" ] || continue
    kill "$(cat "$p")" 2>/dev/null || true
    while kill -0 "$(cat "$p")" 2>/dev/null; do sleep 0.05; done
    rm -f "$p"
  done
}
trap 'stop_all; rm -rf "$W"' EXIT

echo "== the baseline server (containerd 1.6.20's content/local + contentserver)"
mkdir -p "$W/gopath/src/ctdbench"
cp benches/containerd/ctdbench.go "$W/gopath/src/ctdbench/main.go"
(cd "$W/gopath/src/ctdbench" && GO111MODULE=off GOPATH="$W/gopath:/usr/share/gocode" go build -o "$W/ctdbench" .)

echo "== inputs in $W"
cargo bench --quiet --bench import -- --generate "$W/image.tar" "$ARCHIVE_MIB" >/dev/null
head -c $((BLOB_MIB << 20)) /dev/urandom >"$W/blob"
BLOB_DIGEST=sha256:$(sha256sum "$W/blob" | cut -d' ' -f1)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); REG=127.0.0.1:$PORT
mkdir -p "$W/reg"
cat >"$W/reg/config.yml" <<CFG
version: 0.1
log:
  level: error
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $W/reg/data
http:
  addr: $REG
CFG
docker-registry serve "$W/reg/config.yml" >>"$W/reg/log" 2>&1 </dev/null &
echo $! >"$W/reg/pid"
for _ in $(seq 1 200); do curl -fsS "http://$REG/v2/" >/dev/null 2>&1 && break; sleep 0.05; done
skopeo --insecure-policy copy --dest-tls-verify=false oci-archive:"$W/image.tar" "docker://$REG/bench/image:1" >/dev/null
IMAGE=$REG/bench/image:1
"$BIN" --root "$W/prepulled" image pull "$IMAGE" >/dev/null

# One containerd config per content store. gc runs only when asked (ctr ... --sync), so that
# the content a run keeps stays for the next step.
ctd_config() { # NAME [PROXY_SOCKET]
  local d=$W/$1 builtin="" proxy=""
  mkdir -p "$d"
  if [ -n "${2:-}" ]; then
    builtin='"io.containerd.content.v1.content",'
    proxy="[proxy_plugins]
  [proxy_plugins.store]
    type = \"content\"
    address = \"$2\""
  fi
  cat >"$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = [$builtin
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.overlayfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]
[grpc]
  address = "$d/sock"
[ttrpc]
  address = "$d/sock.ttrpc"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$d/opt"
  [plugins."io.containerd.gc.v1.scheduler"]
    mutation_threshold = 1000000
$proxy
EOF
}
ctd_config builtin
ctd_config local "$W/local-srv/sock"
ctd_config ocistore "$W/ocistore-srv/sock"
ctd_config adopt "$W/adopt-srv/sock"

# reset.sh NAME BACKEND: stop NAME's containerd and its backend server, empty both (BACKEND
# "prepulled" starts ocistore on a copy of the pre-pulled root), start them again.
cat >"$W/reset.sh" <<RESET
#!/usr/bin/env bash
set -e
name=\$1 backend=\$2 d=$W/\$1 s=$W/\$1-srv
for p in "\$d/pid" "\$s/pid"; do
  if [ -f "\$p" ]; then kill "\$(cat "\$p")" 2>/dev/null || true; while kill -0 "\$(cat "\$p")" 2>/dev/null; do sleep 0.02; done; rm -f "\$p"; fi
done
rm -rf "\$d/root" "\$d/state" "\$s"; mkdir -p "\$s"
case \$backend in
  local) $W/ctdbench serve "\$s/root" "\$s/sock" >"\$s/out" 2>>"\$s/log" </dev/null & echo \$! >"\$s/pid" ;;
  ocistore) $BIN --root "\$s/root" --json serve --containerd "\$s/sock" >"\$s/out" 2>>"\$s/log" </dev/null & echo \$! >"\$s/pid" ;;
  prepulled) cp -a $W/prepulled "\$s/root"
    $BIN --root "\$s/root" --json serve --containerd "\$s/sock" >"\$s/out" 2>>"\$s/log" </dev/null & echo \$! >"\$s/pid" ;;
esac
if [ "\$backend" != builtin ]; then
  for _ in \$(seq 1 400); do [ -s "\$s/out" ] && break; sleep 0.01; done
fi
containerd --config "\$d/config.toml" >>"\$d/log" 2>&1 </dev/null &
echo \$! >"\$d/pid"
for _ in \$(seq 1 400); do ctr --address "\$d/sock" version >/dev/null 2>&1 && exit 0; sleep 0.02; done
exit 1
RESET
chmod +x "$W/reset.sh"
ctr_of() { echo "ctr --address $W/$1/sock"; }

json() { hyperfine --runs "$RUNS" --style none --export-json "$W/$1.json" "${@:2}" >/dev/null; }
median() { python3 -c "import json,sys; r=json.load(open('$W/$1.json'))['results']; print(' '.join(str(x['median']) for x in r))"; }

echo "== ctr content fetch (${ARCHIVE_MIB} MiB image)"
json fetch \
  --prepare "$W/reset.sh builtin builtin; sync" "$(ctr_of builtin) content fetch --plain-http $IMAGE" \
  --prepare "$W/reset.sh local local; sync" "$(ctr_of local) content fetch --plain-http $IMAGE" \
  --prepare "$W/reset.sh ocistore ocistore; sync" "$(ctr_of ocistore) content fetch --plain-http $IMAGE" \
  --prepare "$W/reset.sh adopt prepulled; sync" "$(ctr_of adopt) content fetch --plain-http $IMAGE"
# Layer bytes over the wire when ocistore already holds the image: blob GETs in one more run.
"$W/reset.sh" adopt prepulled
before=$(grep -c 'GET /v2/bench/image/blobs/' "$W/reg/log" || true)
$(ctr_of adopt) content fetch --plain-http "$IMAGE" >/dev/null
after=$(grep -c 'GET /v2/bench/image/blobs/' "$W/reg/log" || true)
ADOPT_GETS=$((after - before))

echo "== ctr content get (${BLOB_MIB} MiB blob)"
for name in local ocistore; do
  "$W/reset.sh" "$name" "$name"
  $(ctr_of "$name") content ingest --expected-size $((BLOB_MIB << 20)) --expected-digest "$BLOB_DIGEST" bench-blob <"$W/blob"
  $(ctr_of "$name") content label "$BLOB_DIGEST" containerd.io/gc.root=bench >/dev/null
done
json get \
  "$(ctr_of local) content get $BLOB_DIGEST >/dev/null" \
  "$(ctr_of ocistore) content get $BLOB_DIGEST >/dev/null"

echo "== reading the whole blob: ReaderAt with 1 MiB reads, and one Read stream"
read_rate() { # MODE SOCKET: the best of RUNS in MB/s, and that run's client CPU per wall second
  for _ in $(seq 1 "$RUNS"); do
    /usr/bin/time -f "%U %S" -o "$W/time" "$W/ctdbench" "$1" "$2" "$BLOB_DIGEST" | tr '\n' ' '
    cat "$W/time"
  done | awk '{ r = $1 / $2 / 1e6; if (r > best) { best = r; cpu = ($3 + $4) / $2 } } END { printf "%.0f %.2f", best, cpu }'
}
read -r READ_LOCAL CPU_READ_LOCAL <<<"$(read_rate read "$W/local-srv/sock")"
read -r READ_OURS CPU_READ_OURS <<<"$(read_rate read "$W/ocistore-srv/sock")"
read -r STREAM_LOCAL CPU_STREAM_LOCAL <<<"$(read_rate stream "$W/local-srv/sock")"
read -r STREAM_OURS CPU_STREAM_OURS <<<"$(read_rate stream "$W/ocistore-srv/sock")"

echo "== peak RSS of ocistore serve"
RSS_KIB=$(awk '/VmHWM/ { print $2 }' "/proc/$(cat "$W/ocistore-srv/pid")/status")

read -r F_BUILTIN F_LOCAL F_OURS F_ADOPT <<<"$(median fetch)"
read -r G_LOCAL G_OURS <<<"$(median get)"
python3 - "$F_BUILTIN" "$F_LOCAL" "$F_OURS" "$F_ADOPT" "$ADOPT_GETS" "$G_LOCAL" "$G_OURS" \
  "$READ_LOCAL" "$READ_OURS" "$RSS_KIB" "$ARCHIVE_MIB" "$BLOB_MIB" \
  "$STREAM_LOCAL" "$STREAM_OURS" "$CPU_READ_LOCAL" "$CPU_READ_OURS" "$CPU_STREAM_LOCAL" "$CPU_STREAM_OURS" <<'PY'
import sys
fb, fl, fo, fa = map(float, sys.argv[1:5])
gets = int(sys.argv[5])
gl, go = map(float, sys.argv[6:8])
rl, ro = map(float, sys.argv[8:10])
rss = int(sys.argv[10]); amib, bmib = sys.argv[11], sys.argv[12]
sl, so = map(float, sys.argv[13:15])
crl, cro, csl, cso = map(float, sys.argv[15:19])
mb = int(bmib) * (1 << 20) / 1e6
print()
print(f"| what | containerd on ocistore | baseline | ratio |")
print(f"|---|---|---|---|")
print(f"| ctr content fetch, {amib} MiB image | {fo:.2f} s | its own store behind a socket {fl:.2f} s | {fo/fl:.2f}x |")
print(f"| ctr content fetch, {amib} MiB image | {fo:.2f} s | its built-in store {fb:.2f} s | {fo/fb:.2f}x |")
print(f"| the same fetch, image already in ocistore | {fa:.2f} s ({gets} blob GETs) | the first fetch {fo:.2f} s | {fa/fo:.2f}x |")
print(f"| ctr content get, {bmib} MiB blob | {mb/go:.0f} MB/s | its own store behind a socket {mb/gl:.0f} MB/s | {gl/go:.2f}x the rate |")
print(f"| the whole blob, proxy ReaderAt, 1 MiB reads | {ro:.0f} MB/s (client CPU {cro:.2f}) | its own store behind a socket {rl:.0f} MB/s (client CPU {crl:.2f}) | {ro/rl:.2f}x |")
print(f"| the whole blob, one Read stream | {so:.0f} MB/s (client CPU {cso:.2f}) | its own store behind a socket {sl:.0f} MB/s (client CPU {csl:.2f}) | {so/sl:.2f}x |")
print(f"| peak RSS of ocistore serve (fetches, ingest and reads above) | {rss/1024:.1f} MiB | | |")
PY
