#!/usr/bin/env bash
# One command for every GPU figure of the project, on one lent H100/H200 (about 10 minutes):
#   bash bench/gpu_suite.sh            # writes bench/results/*.json and bench/results/gpu_suite.log
# 1. LAQ training at laq_full (LAPA's 344 M model), batch 64, bf16: eager and compiled
#    (samples/s, MFU from the corrected FLOP count, peak memory, compile time);
# 2. labelling pairs/s at laq_full (synthetic 256 px clips: no simulator needed);
# 3. foundation (stage 2) training of a ~0.5 B Qwen2-VL-shaped backbone, batch 64, bf16, with
#    and without gradient checkpointing (tokens/s, samples/s, MFU from counted FLOPs, memory);
# 4. stage 3: finetuning samples/s of a policy on the same 0.5 B backbone, policy latency per
#    action of the three heads, closed-loop Meta-World steps/s with the policy on the GPU
#    (EGL rendering) against the simulator alone; the tiny demo policy likewise;
# 5. the `gpu`-marked tests (bf16 training, labelling, the reports, Fabric FSDP2 on CUDA,
#    stage 3's bf16 finetuning and GPU prediction).
# The order puts the newest measurements first; the compiled LAQ run (longest) comes last. Each step has its own time limit, so one slow step
# cannot eat the others' time; a failed step is reported and the suite goes on.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
export WANDB_MODE=disabled MUJOCO_GL="${MUJOCO_GL:-egl}"
mkdir -p bench/results
LOG=bench/results/gpu_suite.log
: >"$LOG"
gpu="$($PY -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")')"
if [ -z "$gpu" ]; then
  echo "gpu_suite: no CUDA device visible" | tee -a "$LOG"
  exit 2
fi
# dense bf16 peak of the card (NVIDIA's datasheets): H100/H200 SXM 989 TFLOP/s, H100 PCIe 756
case "$gpu" in
  *H100*PCIe*) peak=756 ;;
  *H100*|*H200*|*GH200*) peak=989 ;;
  *A100*) peak=312 ;;
  *) peak="${HLRP_PEAK_TFLOPS:-0}" ;;
esac
echo "gpu_suite on $gpu (peak bf16 $peak TFLOP/s), $(date -u +%FT%TZ)" | tee -a "$LOG"
failed=0
step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  if timeout "$limit" "$@" >>"$LOG" 2>&1; then
    echo "   ok in $((SECONDS - t0)) s" | tee -a "$LOG"
  else
    echo "   FAILED (exit $?) after $((SECONDS - t0)) s: see $LOG" | tee -a "$LOG"
    failed=$((failed + 1))
  fi
}
peak_arg=()
[ "$peak" != 0 ] && peak_arg=(--peak-tflops "$peak")
step low_level_0.5b 180 env HF_HUB_OFFLINE=1 $PY bench/low_level_throughput.py --preset 0.5b \
  --batch 32 --bf16 --steps 5 --repeats 2 --episodes 2
step low_level_tiny 120 env HF_HUB_OFFLINE=1 $PY bench/low_level_throughput.py --preset tiny \
  --batch 32 --episodes 3
step foundation_0.5b 240 env HF_HUB_OFFLINE=1 $PY bench/foundation_throughput.py --preset 0.5b \
  --batch 64 --bf16 --steps 5 --repeats 2 "${peak_arg[@]}"
step gpu_tests 240 env HF_HUB_OFFLINE=1 $PY -m pytest -q -m gpu tests/test_gpu.py
step laq_full_eager 120 $PY bench/laq_train_throughput.py --model laq --batch 64 --bf16 \
  --steps 10 --repeats 3 "${peak_arg[@]}"
step label_laq_full 120 $PY bench/label_throughput.py --model laq --image-size 224 \
  --batch 256 --synthetic
step laq_full_compiled 240 $PY bench/laq_train_throughput.py --model laq --batch 64 --bf16 \
  --compile --steps 10 --repeats 3 "${peak_arg[@]}"
echo "gpu_suite: $failed step(s) failed; JSON in bench/results/" | tee -a "$LOG"
exit $((failed > 0))
