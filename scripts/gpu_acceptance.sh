#!/usr/bin/env bash
# One-shot GPU acceptance: run as is on a machine with a CUDA GPU, from the repository root.
#
#   scripts/gpu_acceptance.sh [OUT]        (OUT defaults to gpu-acceptance/)
#
# 1. environment.txt       torch/CUDA/device, ONNX Runtime providers, Triton
# 2. pytest-gpu.log/.xml   every test marked `gpu` (CUDA syncs and allocations per steady
#                          frame, CUDA graphs vs eager, Triton read vs torch, backends)
# 3. step_bench.md/.json   frame step per path (torch fp32/fp16, CUDA graphs, ONNX Runtime
#                          CUDA), memory 16 vs 64, syncs and allocations per frame, and the
#                          memory read alone with the torch and the Triton kernel
# 4. bench.txt/.csv/.json  eamstcn-bench on the same model (random-weight B1/B1, 480x854)
#
# Each step runs even if an earlier one failed; the exit status is the first failure's.
# About 8-12 minutes on an H100/H200, most of it the export. ONNX Runtime's CUDA
# provider needs onnxruntime-gpu (see ../shared/GPU.md for installing it offline).
set -uo pipefail

OUT=${1:-gpu-acceptance}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT"
status=0
note() { echo "[gpu-acceptance] $*" >&2; }
keep() { local rc=$?; [ $rc -ne 0 ] && [ $status -eq 0 ] && status=$rc; return 0; }

note "environment -> $OUT/environment.txt"
python - >"$OUT/environment.txt" 2>&1 <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
try:
    import onnxruntime
    print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
except ImportError as error:
    print("onnxruntime missing:", error)
try:
    import triton
    print("triton", triton.__version__)
except ImportError as error:
    print("triton missing:", error)
EOF
keep
cat "$OUT/environment.txt" >&2

note "CUDA tests (pytest -m gpu) -> $OUT/pytest-gpu.log"
python -m pytest -m gpu -q -rs -p no:cacheprovider tests --junitxml "$OUT/pytest-gpu.xml" >"$OUT/pytest-gpu.log" 2>&1
keep
tail -n 15 "$OUT/pytest-gpu.log" >&2

note "random-weight B1/B1 checkpoint and a 480x854 fp32+fp16 bundle in $WORK"
python - "$WORK" <<'EOF'
import sys
from pathlib import Path
import torch
from eamstcn.checkpoint import save_checkpoint
from eamstcn.export.bundle import ExportConfig, export_bundle
from eamstcn.network import EamStcn
work = Path(sys.argv[1])
torch.manual_seed(2024)
save_checkpoint(work / "random-b1.pth", EamStcn())
export_bundle(ExportConfig(checkpoint=work / "random-b1.pth", out=work / "engines", fp16=True, frame_size=(480, 854), max_objects=4),
              progress=lambda message: print("  export:", message, file=sys.stderr))
EOF
keep

if [ -f "$WORK/engines/manifest.json" ]; then
  note "frame step benchmark -> $OUT/step_bench.md"
  python scripts/gpu_step_bench.py --checkpoint "$WORK/random-b1.pth" --engines "$WORK/engines" --out "$OUT" >"$OUT/step_bench.log" 2>&1
  keep
  note "eamstcn-bench -> $OUT/bench.txt"
  eamstcn-bench --checkpoint "$WORK/random-b1.pth" --engines "$WORK/engines" --csv "$OUT/bench.csv" --json "$OUT/bench.json" >"$OUT/bench.txt" 2>&1
  keep
else
  note "export failed: no bundle, step benchmark and eamstcn-bench skipped"
fi

note "done: tables in $OUT (exit status $status)"
exit $status
