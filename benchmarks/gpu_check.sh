#!/usr/bin/env bash
# Every GPU measurement in one run, under 8 minutes on one machine; figures go to one file.
#
#   WHEELS=wheels/ bash benchmarks/gpu_check.sh      # writes ${OUT:-.}/gpu_check.txt
#
# WHEELS: a folder of wheels carried to a machine without a network (anitrack's dependencies plus
# onnxruntime-gpu and timm); without it the current environment is used as it is. Measures, with the
# stand-in weights the benchmarks build (hub models cannot be downloaded): YOLOv8m and a CCIP-sized
# caformer by batch size, TransNetV2 and PyAV on a 720p episode (benchmarks/model_bench.py), then the
# hub-cpu pipeline on --device cuda (benchmarks/hub_cpu_bench.py), while nvidia-smi samples how busy the GPU is.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}/gpu_check.txt"
py=python3
if [ -n "${WHEELS:-}" ]; then
  python3 -m venv .venv-gpu
  .venv-gpu/bin/pip install -q --no-index --find-links "$WHEELS" -e '.[bench]' onnxruntime-gpu
  .venv-gpu/bin/pip uninstall -y -q onnxruntime || true  # the CPU build would shadow the CUDA one
  py=.venv-gpu/bin/python
fi
samples=$(mktemp)
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 > "$samples" &
smi=$!
trap 'kill $smi 2>/dev/null || true' EXIT
{
  echo "# gpu_check $(date -u +%FT%TZ) on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
  timeout 240 "$py" benchmarks/model_bench.py --device cuda --batches 1 16 32 64 --seconds 20 --repeats 5
  timeout 240 "$py" benchmarks/hub_cpu_bench.py --device cuda --seconds 120 --variant detect.stride=1
} 2>&1 | tee "$out"
kill $smi 2>/dev/null || true
awk -F', ' '{n++; busy+=$1; if ($1 > 0) used++; if ($2 > mem) mem=$2}
  END {if (n) printf "GPU busy: mean %.0f%%, non-idle %.0f%% of %d samples (0.5 s); peak memory %d MiB\n",
       busy/n, 100*used/n, n, mem}' "$samples" | tee -a "$out"
