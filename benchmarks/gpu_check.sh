#!/usr/bin/env bash
# Every GPU measurement in one run, under 8 minutes on one machine; figures go to one file.
#
#   WHEELS=wheels/ bash benchmarks/gpu_check.sh      # writes ${OUT:-.}/gpu_check.txt
#
# WHEELS: a folder of wheels carried to a machine without a network (anitrack's dependencies plus
# onnxruntime-gpu and timm); without it the current environment is used as it is. With the stand-in
# weights the benchmarks build (hub models cannot be downloaded), it measures:
#  1. YOLOv8m and a CCIP-sized caformer by batch size, TransNetV2 and PyAV on a 720p episode
#     (benchmarks/model_bench.py);
#  2. a 22-minute 1280x720 synthetic episode (rendered in 12 pieces at once, joined) through
#     `--profile full --device cuda` (benchmarks/hub_bench.py): seconds per stage, the ratio to decoding,
#     mean batch sizes per model, and the GPU's busy fraction sampled by nvidia-smi during the pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}/gpu_check.txt"
py=python3
if [ -n "${WHEELS:-}" ]; then
  python3 -m venv .venv-gpu
  .venv-gpu/bin/pip install -q --no-index --find-links "$WHEELS" -e '.[bench]'
  # the CPU build and onnxruntime-gpu share one package folder: remove the one, then (re)install the other
  .venv-gpu/bin/pip uninstall -y -q onnxruntime
  .venv-gpu/bin/pip install -q --no-index --find-links "$WHEELS" --force-reinstall --no-deps onnxruntime-gpu
  py=.venv-gpu/bin/python
fi
{
  echo "# gpu_check $(date -u +%FT%TZ) on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
  timeout 120 "$py" benchmarks/model_bench.py --device cuda --batches 1 16 32 64 --seconds 20 --repeats 3
  timeout 360 "$py" benchmarks/hub_bench.py --profile full --device cuda --seconds 1320 --render-jobs 12
} 2>&1 | tee "$out"
