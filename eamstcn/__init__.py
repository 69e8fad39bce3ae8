"""EamStcn: real-time video object segmentation for edge devices.

This module imports nothing heavy on purpose: ``import eamstcn.runtime`` must work
on a machine without timm, albumentations, pandas or scikit-image.
"""

from __future__ import annotations

import os

# Idle OpenMP threads must sleep, not spin, before torch loads its OpenMP runtime (it
# reads this once, at load). Spinning workers starve every other thread on a small CPU:
# measured on 2 cores, eamstcn-run on a 36-frame clip with the bundled model 7.3 FPS
# spinning vs 20.2 passive (1.0 with --output: the writer thread starved); a tiny training
# step 2.5 s -> 25 s at load 7; ONNX Runtime bench rows at half speed between torch ops.
# Every console script (and torchrun -m eamstcn...) imports this package first, so this is
# the one place it is set; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
