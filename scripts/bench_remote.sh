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
[ -d "$WORK/in" ] || $DFP synth "$WORK/in" --modality image --n-real 600 --n-fake 200 --seed 0 >/dev/null
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
