#!/usr/bin/env bash
# Every GPU check of the project in one run, for a lent GPU machine (see BENCHMARKS.md, "GPU rows").
# Writes logs and JSON under $OUT (default ./gpu_out). Sizes are set by the environment:
#   SAMPLES (2000 synthetic 512x384 JPEGs), BATCHES (30 timed loader batches), DEVICE (cuda), QUICK=1 for a
#   dry run on a CPU machine (tiny sizes, DEVICE=cpu) that checks the script itself.
# The device machines (Python 3.12) lack nvidia-dali-cuda130, decord, webdataset, imbalanced-learn, soundfile and
# av (PyAV); carry their cp312 manylinux wheels (DALI's in parts under 60 MB, see the device tool's README), then
#   pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# Face crops need dlib-bin and face-recognition-models too (only tests/test_faces.py; not run here).
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
SAMPLES=${SAMPLES:-2000}
BATCHES=${BATCHES:-30}
TRAIN_BATCHES=${TRAIN_BATCHES:-20}
TRAIN_BS=${TRAIN_BS:-128}
if [ "${QUICK:-0}" = 1 ]; then DEVICE=cpu SAMPLES=60 BATCHES=2 TRAIN_BATCHES=1 TRAIN_BS=4; fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WORK=$(mktemp -d)
step() { echo "== $(date +%T) $*" | tee -a "$OUT/steps.log"; }

step "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc;
  $PY -c "import torch, nvidia.dali as d; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'dali', d.__version__)"; } \
  > "$OUT/machine.txt" 2>&1

step "GPU tests and DALI contracts"
$PY -m pytest -q tests/test_gpu.py tests/test_dali_contracts.py -rA > "$OUT/tests.log" 2>&1; echo "rc=$?" >> "$OUT/tests.log"

step "data: $SAMPLES synthetic 512x384 JPEGs, packed"
$PY -m pipeline.cli synth "$WORK/raw" --modality image --n-real $((SAMPLES * 3 / 4)) --n-fake $((SAMPLES / 4)) \
    --image-size 512x384 > /dev/null 2>&1
$PY -m pipeline.cli shard "$WORK/raw" "$WORK/shards" --quiet > "$OUT/shard.log" 2>&1
# the hardware JPEG decoder takes baseline 4:2:0 only: say what the shards hold
$PY - "$WORK/shards" > "$OUT/jpeg_kinds.txt" 2>&1 <<'PYEOF'
import collections, glob, io, sys, tarfile
from PIL import Image, JpegImagePlugin
kinds = collections.Counter()
for t in sorted(glob.glob(sys.argv[1] + "/train/*.tar"))[:4]:
    with tarfile.open(t) as tf:
        for m in tf.getmembers()[:400]:
            if m.name.endswith(".jpg"):
                im = Image.open(io.BytesIO(tf.extractfile(m).read()))
                sub = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}.get(JpegImagePlugin.get_sampling(im), "other")
                kinds[f"{sub} {'progressive' if im.info.get('progressive') else 'baseline'}"] += 1
print(dict(kinds))
PYEOF

bench() {  # name, then dfp bench loader options
  local name=$1; shift
  $PY -m pipeline.cli bench loader "$WORK/shards" --device "$DEVICE" --batches "$BATCHES" --json "$WORK/$name.json" "$@" \
      >> "$OUT/loaders.log" 2>&1 || echo "$name failed" >> "$OUT/loaders.log"
}
step "loaders: DALI mixed sweep (hw_decoder_load, threads), torchvision GPU decode, CPU loaders, the plain PyTorch way"
for load in 0 0.12 0.3 0.65 0.9; do bench "dali_load$load" --backend dali --hw-decoder-load "$load"; done
for threads in 4 8 15; do bench "dali_threads$threads" --backend dali --dali-threads "$threads"; done
bench torch_gpu_decode --backend torch --gpu-decode --workers 8
bench torch_cpu --backend torch --workers 8
bench dali_cpu --backend dali --device cpu
$PY -m pipeline.cli bench loader "$WORK/raw" --backend seed --device "$DEVICE" --batches "$BATCHES" --workers 8 \
    --json "$WORK/seed.json" >> "$OUT/loaders.log" 2>&1
$PY - "$WORK" "$OUT/loaders.json" <<'PYEOF'
import glob, json, os, sys
rows = {os.path.basename(p)[:-5]: json.load(open(p)) for p in sorted(glob.glob(sys.argv[1] + "/*.json"))}
json.dump(rows, open(sys.argv[2], "w"), indent=1)
for k, r in rows.items():
    print(f"{k:20s} {r['samples_per_s']:10.1f} samples/s  {r.get('device', '')}")
PYEOF

step "training: EfficientNet-B0 224, DALI loader, fp32 vs AMP"
$PY -m pipeline.cli bench train "$WORK/shards" --device "$DEVICE" --backend dali --model efficientnet_b0 \
    --batch-size "$TRAIN_BS" --batches "$TRAIN_BATCHES" --json "$OUT/train.json" > "$OUT/train.log" 2>&1

step "done"
cat "$OUT/steps.log"
rm -rf "$WORK"
