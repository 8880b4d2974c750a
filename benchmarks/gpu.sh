#!/usr/bin/env bash
# Every GPU benchmark of benchmarks/RESULTS.md in one go, about 8 minutes on one H100/H200 (more GPUs add the
# scaling run): bash benchmarks/gpu.sh [OUT_DIR]. Each benchmark's log goes to OUT_DIR (default
# benchmarks/gpu_results); a benchmark that fails does not stop the others. score_models and caustics (the
# baselines) come from `pip install -e ".[bench]"`; without them those two print no ratio.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/gpu_results}
mkdir -p "$out"
py=${PYTHON:-python}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; "$py" -c "import torch; print('torch', torch.__version__)"; } > "$out/device.txt" 2>&1
run() {  # name, then the command's arguments
  local name=$1; shift
  echo "== $name: $*" | tee -a "$out/commands.txt"
  timeout 150 "$py" "$@" > "$out/$name.log" 2>&1 || echo "   $name failed or timed out (status $?)" | tee -a "$out/commands.txt"
}
run score_net benchmarks/score_net.py --size 256 --batch 64 --nf 64 --ch-mult 1,2,2,2 --device cuda --iters 10 --warmup 3
run lensing benchmarks/lensing.py --batch 1 32 --device cuda
run sweep_fp32 benchmarks/sweep.py --device cuda --repeats 2
run sweep_fast benchmarks/sweep.py --device cuda --repeats 2 --precision bfloat16 --channels-last --compile
run sweep_fast_solver benchmarks/sweep.py --device cuda --repeats 2 --precision bfloat16 --channels-last --compile \
    --predictor dpmpp_2m_sde --steps 50 --corrector 0
gpus=$(nvidia-smi -L | wc -l)
if [ "$gpus" -gt 1 ]; then
  run sweep_scaling benchmarks/sweep.py --device cuda --repeats 2 --devices "$gpus"
fi
