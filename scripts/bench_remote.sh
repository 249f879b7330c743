#!/usr/bin/env bash
# The loader on the same shards from local disk and from a loopback S3 server (moto, 127.0.0.1):
# ranged reads, and whole shards through --cache-dir (cold: fetched during the timed batches; warm: cached).
#   scripts/bench_remote.sh [WORK_DIR] [BACKEND]     (defaults: /tmp/dfp-bench-remote, torch)
# Needs moto[server] (the test extra). Writes WORK_DIR/{local,s3_ranged,s3_cache_cold,s3_cache_warm}.json.
set -euo pipefail
WORK=${1:-/tmp/dfp-bench-remote}
BACKEND=${2:-torch}
PY=${PY:-python}
DFP="$PY -m pipeline.cli"
PORT=${PORT:-5123}
mkdir -p "$WORK"
[ -d "$WORK/in" ] || $DFP synth "$WORK/in" --modality image --n-real 600 --n-fake 200 --seed 0 >/dev/null 2>&1
[ -d "$WORK/shards" ] || $DFP shard "$WORK/in" "$WORK/shards" --workers 2 --quiet >/dev/null
$PY -m moto.server -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
MOTO=$!
trap 'kill $MOTO' EXIT
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1
for _ in $(seq 50); do $PY -c "import s3fs; s3fs.S3FileSystem().mkdir('bench')" 2>/dev/null && break; sleep 0.2; done
$DFP shard "$WORK/in" s3://bench/img --workers 2 --quiet >/dev/null
rm -rf "$WORK/cache"
ARGS=(--backend "$BACKEND" --device cpu --batch-size 32 --batches 20 --warmup 2 --workers 2 --image-size 224)
$DFP bench loader "$WORK/shards" "${ARGS[@]}" --json "$WORK/local.json"
$DFP bench loader s3://bench/img "${ARGS[@]}" --json "$WORK/s3_ranged.json"
$DFP bench loader s3://bench/img "${ARGS[@]}" --cache-dir "$WORK/cache" --json "$WORK/s3_cache_cold.json"
$DFP bench loader s3://bench/img "${ARGS[@]}" --cache-dir "$WORK/cache" --json "$WORK/s3_cache_warm.json"
# the reads alone (no decoding): every train sample's payload once, in index order
$PY - "$WORK" <<'PY'
import json, sys, time
from pipeline.loaders.index import ShardIndex
work = sys.argv[1]
out = {}
for name, root, cache in (("local", f"{work}/shards", None), ("s3_ranged", "s3://bench/img", None),
                          ("s3_cache_warm", "s3://bench/img", f"{work}/cache")):
    idx = ShardIndex(root, "train", cache_dir=cache, cache_limit=1 << 30)
    t = time.perf_counter()
    n = sum(len(idx.read(i)[0]) for i in range(len(idx)))
    s = time.perf_counter() - t
    out[name] = {"samples": len(idx), "bytes": n, "seconds": s, "samples_per_s": len(idx) / s}
    print(f"read only, {name}: {len(idx) / s:.0f} samples/s ({n / s / 2**20:.1f} MiB/s, {len(idx)} samples)")
json.dump(out, open(f"{work}/read_only.json", "w"), indent=1)
PY
