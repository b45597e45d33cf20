#!/usr/bin/env bash
# ocistore against its peers, side by side in one run on the same generated inputs:
#   image import:   ocistore image import  vs  ctr images import  vs  skopeo copy oci-archive: oci:
#   one 1 GiB blob: ocistore content put   vs  ctr content ingest
#   1,000 small blobs, one process per blob, for both.
# Installs containerd, skopeo and hyperfine from Debian, runs containerd as a plain process
# with a private root and socket (stopped at exit), and prints a table of medians and ratios.
#
#   bash benches/peers.sh            # BLOB_MIB=1024 ARCHIVE_MIB=200 SMALL=1000 RUNS=5 by default
set -euo pipefail
cd "$(dirname "$0")/.."
BLOB_MIB=${BLOB_MIB:-1024}
ARCHIVE_MIB=${ARCHIVE_MIB:-200}
SMALL=${SMALL:-1000}
RUNS=${RUNS:-5}

need=()
for t in containerd ctr skopeo hyperfine; do command -v "$t" >/dev/null || need+=("$t"); done
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update </dev/null >/dev/null
  apt-get install -y --no-install-recommends containerd skopeo hyperfine </dev/null >/dev/null
fi

cargo build --release --quiet
BIN=$PWD/target/release/ocistore
W=$(mktemp -d "${TMPDIR:-/var/tmp}/ocistore-peers.XXXXXX")
cleanup() { [ -f "$W/ctd/pid" ] && kill "$(cat "$W/ctd/pid")" 2>/dev/null; sleep 0.5; rm -rf "$W"; }
trap cleanup EXIT

echo "== inputs in $W"
cargo bench --quiet --bench import -- --generate "$W/image.tar" "$ARCHIVE_MIB" >/dev/null
head -c $((BLOB_MIB << 20)) /dev/urandom >"$W/blob"
BLOB_DIGEST=sha256:$(sha256sum "$W/blob" | cut -d' ' -f1)
mkdir -p "$W/small"
for i in $(seq 1 "$SMALL"); do head -c 4096 /dev/urandom >"$W/small/$i"; done

echo "== containerd"
mkdir -p "$W/ctd"
cat >"$W/ctd/config.toml" <<EOF
version = 2
root = "$W/ctd/root"
state = "$W/ctd/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.overlayfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]
[grpc]
  address = "$W/ctd/sock"
[ttrpc]
  address = "$W/ctd/sock.ttrpc"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$W/ctd/opt"
EOF
CTR="ctr --address $W/ctd/sock"
# Before each timed ctr run: a fresh containerd with an empty root, so that nothing is
# already there (content removed from a namespace stays in containerd's store until its gc).
cat >"$W/ctd-reset.sh" <<RESET
#!/usr/bin/env bash
if [ -f "$W/ctd/pid" ]; then
  kill \$(cat "$W/ctd/pid") 2>/dev/null
  while kill -0 \$(cat "$W/ctd/pid") 2>/dev/null; do sleep 0.05; done
fi
rm -rf "$W/ctd/root" "$W/ctd/state"
containerd --config "$W/ctd/config.toml" >>"$W/ctd/log" 2>&1 </dev/null &
echo \$! >"$W/ctd/pid"
for _ in \$(seq 1 200); do $CTR version >/dev/null 2>&1 && exit 0; sleep 0.05; done
exit 1
RESET
chmod +x "$W/ctd-reset.sh"
"$W/ctd-reset.sh"
CTR_CLEAN="$W/ctd-reset.sh"

json() { hyperfine --runs "$RUNS" --style none --export-json "$W/$1.json" "${@:2}" >/dev/null; }
median() { python3 -c "import json,sys; r=json.load(open('$W/$1.json'))['results']; print(' '.join(str(x['median']) for x in r))"; }

echo "== image import (${ARCHIVE_MIB} MiB archive)"
json import \
  --prepare "rm -rf $W/os" "$BIN --root $W/os image import $W/image.tar" \
  --prepare "$CTR_CLEAN" "$CTR images import --no-unpack --all-platforms $W/image.tar" \
  --prepare "rm -rf $W/sk" "skopeo --insecure-policy copy --all oci-archive:$W/image.tar oci:$W/sk:bench"
echo "== one ${BLOB_MIB} MiB blob"
json blob \
  --prepare "rm -rf $W/os" "$BIN --root $W/os content put $W/blob" \
  --prepare "$CTR_CLEAN" "$CTR content ingest --expected-size $((BLOB_MIB << 20)) --expected-digest $BLOB_DIGEST bench-blob <$W/blob"
echo "== ${SMALL} small blobs, one process each"
json small \
  --prepare "rm -rf $W/os" "for f in $W/small/*; do $BIN --root $W/os content put \$f >/dev/null; done" \
  --prepare "$CTR_CLEAN" "for f in $W/small/*; do $CTR content ingest small-\$(basename \$f) <\$f; done"

read -r oi ci si <<<"$(median import)"
read -r ob cb <<<"$(median blob)"
read -r os cs <<<"$(median small)"
python3 - "$oi" "$ci" "$si" "$ob" "$cb" "$os" "$cs" "$ARCHIVE_MIB" "$BLOB_MIB" "$SMALL" <<'EOF'
import sys
oi, ci, si, ob, cb, os_, cs = map(float, sys.argv[1:8])
am, bm, n = sys.argv[8:11]
print()
print("| work | ocistore | ctr | skopeo | ctr / ocistore | skopeo / ocistore |")
print("|---|---|---|---|---|---|")
print(f"| import a {am} MiB OCI archive | {oi:.2f} s | {ci:.2f} s | {si:.2f} s | {ci/oi:.2f}x | {si/oi:.2f}x |")
print(f"| put one {bm} MiB blob | {ob:.2f} s | {cb:.2f} s | - | {cb/ob:.2f}x | - |")
print(f"| put {n} x 4 KiB blobs, a process each | {os_:.2f} s | {cs:.2f} s | - | {cs/os_:.2f}x | - |")
print()
print("medians of hyperfine runs; ratio > 1 means ocistore is faster")
EOF
