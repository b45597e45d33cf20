#!/usr/bin/env bash
# ocistore against its peers, side by side in one run on the same generated inputs:
#   image import:   ocistore image import  vs  ctr images import  vs  skopeo copy oci-archive: oci:
#   one 1 GiB blob: ocistore content put   vs  ctr content ingest
#   1,000 small blobs, one process per blob, for both.
#   registry pull:  ocistore image pull  vs  skopeo copy docker:// oci:  vs  ctr content fetch
#   registry push:  ocistore image push  vs  skopeo copy oci: docker://  vs  ctr images push
#                   (the push registry restarted empty before every run), plus a re-pull, a
#                   push to a second repository (mounts) and a repeated push (HEADs only)
#                   and pull against our own import of the image, taking turns
#   CLI latency:    read commands on a small store (hyperfine, warm cache)
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
for t in containerd ctr skopeo hyperfine docker-registry curl; do command -v "$t" >/dev/null || need+=("$t"); done
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update </dev/null >/dev/null
  apt-get install -y --no-install-recommends containerd skopeo hyperfine docker-registry curl </dev/null >/dev/null
fi

cargo build --release --quiet
BIN=$PWD/target/release/ocistore
W=$(mktemp -d "${TMPDIR:-/var/tmp}/ocistore-peers.XXXXXX")
cleanup() {
  for p in "$W"/ctd/pid "$W"/reg-*/pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done
  sleep 0.5
  rm -rf "$W"
}
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

# Registries: one holding the image for pulls, one restarted empty before each push run.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cat >"$W/reg-reset.sh" <<'RESET'
#!/usr/bin/env bash
# reg-reset.sh DIR PORT: (re)start an empty registry serving DIR on 127.0.0.1:PORT
d=$1; port=$2
if [ -f "$d/pid" ]; then
  kill "$(cat "$d/pid")" 2>/dev/null
  while kill -0 "$(cat "$d/pid")" 2>/dev/null; do sleep 0.05; done
fi
rm -rf "$d/data"; mkdir -p "$d"
cat >"$d/config.yml" <<CFG
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $d/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
CFG
docker-registry serve "$d/config.yml" >>"$d/log" 2>&1 </dev/null &
echo $! >"$d/pid"
for _ in $(seq 1 200); do curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && exit 0; sleep 0.05; done
exit 1
RESET
chmod +x "$W/reg-reset.sh"
PULL_PORT=$(free_port); PUSH_PORT=$(free_port)
PULLREG=127.0.0.1:$PULL_PORT; PUSHREG=127.0.0.1:$PUSH_PORT
"$W/reg-reset.sh" "$W/reg-pull" "$PULL_PORT"
"$W/reg-reset.sh" "$W/reg-push" "$PUSH_PORT"
skopeo --insecure-policy copy --dest-tls-verify=false oci-archive:"$W/image.tar" "docker://$PULLREG/bench/image:1" >/dev/null
# Sources for the pushes: the image in an ocistore store, a skopeo layout, containerd.
rm -rf "$W/pushsrc"; "$BIN" --root "$W/pushsrc" image import "$W/image.tar" >/dev/null
SRC_NAME=$("$BIN" --root "$W/pushsrc" image ls -q | head -1)
rm -rf "$W/skl"; skopeo --insecure-policy copy oci-archive:"$W/image.tar" "oci:$W/skl:bench" >/dev/null
cat >"$W/ctr-push.sh" <<CTRPUSH
#!/usr/bin/env bash
exec $CTR images push --plain-http $PUSHREG/bench/image:1 "\$($CTR images ls -q | head -1)" >/dev/null
CTRPUSH
chmod +x "$W/ctr-push.sh"
RESET_PUSH="$W/reg-reset.sh $W/reg-push $PUSH_PORT"

echo "== registry pull (${ARCHIVE_MIB} MiB image), and our import of it in the same run"
# Each run starts after a sync, so that no side pays for the writeback of the run before it.
json pull \
  --prepare "rm -rf $W/pl; sync" "$BIN --root $W/pl image pull $PULLREG/bench/image:1" \
  --prepare "rm -rf $W/skp; sync" "skopeo --insecure-policy copy --src-tls-verify=false docker://$PULLREG/bench/image:1 oci:$W/skp:x" \
  --prepare "$CTR_CLEAN; sync" "$CTR content fetch --plain-http $PULLREG/bench/image:1" \
  --prepare "rm -rf $W/pl; sync" "$BIN --root $W/pl image import $W/image.tar"
echo "== pull and import taking turns (${TURNS:-11} rounds)"
# hyperfine runs a command's runs back to back, so a phase of this machine's disk can favour
# one side; here pull and import alternate, each after a sync and a rest, and the ratio of
# their medians is reported.
python3 - "$BIN" "$W" "$PULLREG" "${TURNS:-11}" "$(cat "$W/reg-pull/pid")" >"$W/turns.txt" <<'PY'
import os, statistics, subprocess, sys, time
bin_, w, reg, rounds, reg_pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
sides = {
    "pull": [bin_, "--root", f"{w}/pl", "image", "pull", f"{reg}/bench/image:1"],
    "import": [bin_, "--root", f"{w}/pl", "image", "import", f"{w}/image.tar"],
}
def registry_cpu():
    # utime + stime of the registry process, in seconds
    fields = open(f"/proc/{reg_pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
took = {k: [] for k in sides}
cpu = {k: [] for k in sides}
reg_cpu = []
for r in range(rounds):
    for k in (["pull", "import"] if r % 2 == 0 else ["import", "pull"]):
        subprocess.run(["rm", "-rf", f"{w}/pl"], check=True)
        subprocess.run(["sync"], check=True)
        time.sleep(1)
        r0 = registry_cpu()
        t = time.perf_counter()
        child = subprocess.Popen(sides[k], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        err = child.stderr.read()
        _, status, usage = os.wait4(child.pid, 0)
        took[k].append(time.perf_counter() - t)
        cpu[k].append(usage.ru_utime + usage.ru_stime)
        if k == "pull":
            reg_cpu.append(registry_cpu() - r0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{k} failed: {err.decode(errors='replace')}")
med = statistics.median
print(f"{med(took['pull'])} {med(took['import'])} {med(cpu['pull'])} {med(cpu['import'])} {med(reg_cpu)}")
PY
echo "== re-pull of a present image"
rm -rf "$W/rp"; "$BIN" --root "$W/rp" image pull "$PULLREG/bench/image:1" >/dev/null
json repull "$BIN --root $W/rp image pull $PULLREG/bench/image:1"
echo "== registry push to an empty registry"
json push \
  --prepare "$RESET_PUSH" "$BIN --root $W/pushsrc image push $SRC_NAME $PUSHREG/bench/image:1" \
  --prepare "$RESET_PUSH" "skopeo --insecure-policy copy --dest-tls-verify=false oci:$W/skl:bench docker://$PUSHREG/bench/image:1" \
  --prepare "$CTR_CLEAN && $CTR images import --no-unpack $W/image.tar >/dev/null && $RESET_PUSH" "$W/ctr-push.sh"
echo "== push to a second repository (mounts), and a repeated push (HEADs only)"
json mount \
  --prepare "$RESET_PUSH && $BIN --root $W/pushsrc image push $SRC_NAME $PUSHREG/bench/image:1 >/dev/null" \
  "$BIN --root $W/pushsrc image push $SRC_NAME $PUSHREG/other/image:1" \
  "$BIN --root $W/pushsrc image push $SRC_NAME $PUSHREG/bench/image:1"

echo "== CLI latency (small store)"
rm -rf "$W/small-store"; "$BIN" --root "$W/small-store" image import tests/fixtures/sample.oci.tar >/dev/null
SAMPLE=$("$BIN" --root "$W/small-store" image ls -q | head -1)
S="$BIN --root $W/small-store"
hyperfine -N --warmup 3 --runs 30 --style none --export-json "$W/cli.json" \
  "$S content ls" "$S image ls" "$S image check $SAMPLE --platform linux/amd64" \
  "$S image inspect $SAMPLE" "$S du" "$S ingest ls" "$S lease ls" >/dev/null

read -r oi ci si <<<"$(median import)"
read -r ob cb <<<"$(median blob)"
read -r os cs <<<"$(median small)"
read -r pl_o pl_s pl_c pl_i <<<"$(median pull)"
read -r rp <<<"$(median repull)"
read -r turn_p turn_i cpu_p cpu_i cpu_r <"$W/turns.txt"
read -r ps_o ps_s ps_c <<<"$(median push)"
read -r mnt rep <<<"$(median mount)"
python3 - "$oi" "$ci" "$si" "$ob" "$cb" "$os" "$cs" "$ARCHIVE_MIB" "$BLOB_MIB" "$SMALL" \
  "$pl_o" "$pl_s" "$pl_c" "$rp" "$ps_o" "$ps_s" "$ps_c" "$mnt" "$rep" "$W/cli.json" "$pl_i" \
  "$turn_p" "$turn_i" "$cpu_p" "$cpu_i" "$cpu_r" <<'PY'
import json, os, sys
oi, ci, si, ob, cb, os_, cs = map(float, sys.argv[1:8])
am, bm, n = sys.argv[8:11]
pl_o, pl_s, pl_c, rp, ps_o, ps_s, ps_c, mnt, rep = map(float, sys.argv[11:20])
pl_i = float(sys.argv[21])
turn_p, turn_i = float(sys.argv[22]), float(sys.argv[23])
cpu_p, cpu_i, cpu_r = float(sys.argv[24]), float(sys.argv[25]), float(sys.argv[26])
cores = os.cpu_count()
print()
print("| work | ocistore | ctr | skopeo | ctr / ocistore | skopeo / ocistore |")
print("|---|---|---|---|---|---|")
print(f"| import a {am} MiB OCI archive | {oi:.2f} s | {ci:.2f} s | {si:.2f} s | {ci/oi:.2f}x | {si/oi:.2f}x |")
print(f"| put one {bm} MiB blob | {ob:.2f} s | {cb:.2f} s | - | {cb/ob:.2f}x | - |")
print(f"| put {n} x 4 KiB blobs, a process each | {os_:.2f} s | {cs:.2f} s | - | {cs/os_:.2f}x | - |")
print(f"| pull the {am} MiB image from a loopback registry | {pl_o:.3f} s | {pl_c:.3f} s | {pl_s:.3f} s | {pl_c/pl_o:.2f}x | {pl_s/pl_o:.2f}x |")
print(f"| push it to an empty registry | {ps_o:.3f} s | {ps_c:.3f} s | {ps_s:.3f} s | {ps_c/ps_o:.2f}x | {ps_s/ps_o:.2f}x |")
print()
print(f"pull / import of the same image, measured in the pull's run: {pl_o:.3f} s / {pl_i:.3f} s = {pl_o/pl_i:.2f}x (target <= 1.2x)")
print(f"pull / import taking turns, medians: {turn_p:.3f} s / {turn_i:.3f} s = {turn_p/turn_i:.2f}x")
floor = (cpu_p + cpu_r) / cores
print(f"  CPU per pull: ours {cpu_p:.3f} s + the registry's {cpu_r:.3f} s on {cores} cores: no pull can take less than {floor:.3f} s "
      f"({floor/turn_i:.2f}x the import, whose CPU is {cpu_i:.3f} s); the pull took {turn_p/floor:.2f}x that floor")
print(f"re-pull of a present image: {rp*1000:.1f} ms; push to a second repository (mounts): {mnt:.3f} s; repeated push (HEADs only): {rep*1000:.1f} ms")
print()
print("| CLI command (small store) | median |")
print("|---|---|")
for r in json.load(open(sys.argv[20]))["results"]:
    cmd = r["command"].split(" ", 3)[3]
    print(f"| `{cmd}` | {r['median']*1000:.1f} ms |")
print()
print("medians of hyperfine runs; ratio > 1 means ocistore is faster")
PY
