#!/usr/bin/env bash
# GPU acceptance in one call, for a fresh device machine (repository root as working dir):
#
#   scripts/gpu_acceptance.sh OUT            run it (about 8 minutes at most on an H100)
#   scripts/gpu_acceptance.sh OUT --dry-run  install, collect the GPU tests, print the plan,
#                                            exit 0 (works without CUDA and albumentations)
#
# Steps, each in its own subprocess with its own time limit (seconds), logs in OUT:
#   install      pip install --no-deps --no-build-isolation -e .          install.log
#   environment  torch/CUDA/Triton versions; conditional nodes, tl.topk,   environment.txt
#                the ONNX Runtime CUDA provider: present or not
#   gpu-tests    pytest -m gpu on the test files that hold gpu tests      pytest-gpu.log/.xml
#                (only those: others may import albumentations)
#   checkpoint   random-weight B1/B1 checkpoint                          checkpoint.log
#   step-bench   480x854: PyTorch eager fp32 vs the graphed fp16 step at  step_bench.md/.json
#                memory 16 and 64 (FPS, syncs, allocations and stores per
#                frame, step mode)
#   reads        the memory read alone per kernel at 16 and 64 frames,    reads.md/.json
#                kernels alternated
#   breakdown    per-stage times from a separate eager fp16 pass          breakdown.md/.json
#   bench        eamstcn-bench (torch-fp32, torch-fp16), if time remains  bench.txt/.json
# summary.txt lists each step's status and seconds. A missing piece (no CUDA, no Triton,
# no onnxruntime-gpu) is skipped or reported by the step that needs it, never fatal to
# the others. Exit status: 0 when every step that ran passed, else 1.
# ACCEPTANCE_SKIP_INSTALL=1 skips the install (CI's dry-run test: the package is installed).
set -uo pipefail

OUT=${1:?usage: scripts/gpu_acceptance.sh OUT [--dry-run]}
DRY=0
[ "${2:-}" = "--dry-run" ] && DRY=1
PYTHON=${PYTHON:-python3}
BUDGET=${ACCEPTANCE_BUDGET_S:-470}  # the whole run, under 8 minutes
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
START=$(date +%s)
FAILED=0
: >"$OUT/summary.txt"

note() { echo "[gpu-acceptance] $*"; }
elapsed() { echo $(( $(date +%s) - START )); }

# step NAME LIMIT LOG COMMAND...: run in a subprocess under a time limit, record the outcome.
step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local left=$(( BUDGET - $(elapsed) ))
  if [ "$left" -lt 20 ]; then
    echo "$name: skipped (no time left)" | tee -a "$OUT/summary.txt"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  note "$name (limit ${limit}s) -> $log"
  local began=$(date +%s) rc
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$log" 2>&1
  rc=$?
  local took=$(( $(date +%s) - began ))
  if [ $rc -eq 0 ]; then
    echo "$name: ok (${took}s)" | tee -a "$OUT/summary.txt"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "$name: TIMED OUT after ${limit}s" | tee -a "$OUT/summary.txt"
    FAILED=1
  else
    echo "$name: FAILED (exit $rc, ${took}s; see $log)" | tee -a "$OUT/summary.txt"
    FAILED=1
  fi
  tail -n 8 "$OUT/$log"
  return 0
}

if [ "${ACCEPTANCE_SKIP_INSTALL:-0}" = "1" ]; then
  echo "install: skipped (ACCEPTANCE_SKIP_INSTALL=1)" | tee -a "$OUT/summary.txt"
else
  step install 120 install.log "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e .
fi

step environment 60 environment.txt "$PYTHON" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
from eamstcn.runtime.cuda_graphs import conditional_nodes_available
print("CUDA graph conditional nodes (one-graph step):", conditional_nodes_available())
try:
    import triton
    from eamstcn.runtime.readout_triton import triton_problem
    print("triton", triton.__version__, "fused read:", triton_problem() or "tl.topk present")
except ImportError as error:
    print("triton missing:", error)
try:
    import onnxruntime
    providers = onnxruntime.get_available_providers()
    print("onnxruntime", onnxruntime.__version__, providers, "CUDA provider:", "CUDAExecutionProvider" in providers)
except ImportError as error:
    print("onnxruntime missing:", error)
try:
    import tensorrt
    print("tensorrt", tensorrt.__version__)
except Exception as error:
    print("tensorrt missing:", type(error).__name__)
EOF

# Only the test files with gpu tests: collecting the others would import albumentations.
GPU_TESTS=$(grep -l "mark.gpu" tests/test_*.py | tr '\n' ' ')
PYTEST=("$PYTHON" -m pytest -p no:cacheprovider -m gpu $GPU_TESTS)

if [ $DRY -eq 1 ]; then
  step collect 120 collect-gpu.log "${PYTEST[@]}" --collect-only -q
  cat <<EOF
plan (each step its own subprocess and time limit, logs in $OUT, whole run <= ${BUDGET}s):
  gpu-tests    180s  ${PYTEST[*]} -q -rs
  checkpoint    60s  random-weight B1/B1 -> $WORK/random-b1.pth
  step-bench   120s  scripts/gpu_step_bench.py --steps paths --size 480x854 --capacities 16,64
  reads         45s  scripts/gpu_step_bench.py --steps reads
  breakdown     40s  scripts/gpu_step_bench.py --steps breakdown
  bench        rest  eamstcn-bench --backends torch-fp32,torch-fp16 (skipped under 40s)
EOF
  note "dry run: $(grep -c '::' "$OUT/collect-gpu.log" || true) GPU tests collected; nothing run on a GPU"
  rm -rf "$WORK"
  exit $FAILED
fi

step gpu-tests 180 pytest-gpu.log "${PYTEST[@]}" -q -rs --junitxml "$OUT/pytest-gpu.xml"

step checkpoint 60 checkpoint.log "$PYTHON" -c "
import torch
from eamstcn.checkpoint import save_checkpoint
from eamstcn.network import EamStcn
torch.manual_seed(2024)
save_checkpoint('$WORK/random-b1.pth', EamStcn())
"

if [ -f "$WORK/random-b1.pth" ]; then
  BENCH=("$PYTHON" scripts/gpu_step_bench.py --checkpoint "$WORK/random-b1.pth" --size 480x854 --capacities 16,64)
  step step-bench 120 step_bench.log "${BENCH[@]}" --steps paths --out "$OUT"
  step reads 45 reads.log "${BENCH[@]}" --steps reads --out "$WORK/reads"
  [ -f "$WORK/reads/step_bench.md" ] && cp "$WORK/reads/step_bench.md" "$OUT/reads.md" && cp "$WORK/reads/step_bench.json" "$OUT/reads.json"
  step breakdown 40 breakdown.log "${BENCH[@]}" --steps breakdown --frames 30 --out "$WORK/breakdown"
  [ -f "$WORK/breakdown/step_bench.md" ] && cp "$WORK/breakdown/step_bench.md" "$OUT/breakdown.md" && cp "$WORK/breakdown/step_bench.json" "$OUT/breakdown.json"
  if [ $(( BUDGET - $(elapsed) )) -ge 40 ]; then
    step bench $(( BUDGET - $(elapsed) )) bench.txt eamstcn-bench --checkpoint "$WORK/random-b1.pth" --backends torch-fp32,torch-fp16 \
      --size 480x854 --frames-count 100 --json "$OUT/bench.json"
  else
    echo "bench: skipped (under 40s left)" | tee -a "$OUT/summary.txt"
  fi
else
  echo "step-bench, reads, breakdown, bench: skipped (no checkpoint)" | tee -a "$OUT/summary.txt"
fi

rm -rf "$WORK"
note "done in $(elapsed)s: $OUT/summary.txt"
cat "$OUT/summary.txt"
exit $FAILED
