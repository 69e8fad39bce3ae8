"""EamStcn: real-time video object segmentation for edge devices.

This module imports nothing heavy on purpose: ``import eamstcn.runtime`` must work
on a machine without timm, albumentations, pandas or scikit-image.
"""

from __future__ import annotations

import os

# Idle OpenMP threads must sleep, not spin, before torch loads its OpenMP runtime (it
# reads this once, at load): the runtime runs a capture thread and a writer thread beside
# torch's, and spinning workers starve them. Measured on 2 cores, the bundled model on a
# 36-frame clip: eamstcn-run 7.3 FPS spinning vs 20.2 FPS passive; with --output 1.0 FPS.
# Every console script imports this package first; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
