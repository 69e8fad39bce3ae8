"""EamStcn: real-time video object segmentation for edge devices.

This module imports nothing heavy on purpose: ``import eamstcn.runtime`` must work
on a machine without timm, albumentations, pandas or scikit-image. Nor does importing it
change the process (environment variables, log levels): the commands do that,
in :mod:`eamstcn.entry_points`.
"""

from __future__ import annotations

__version__ = "0.1.0"
