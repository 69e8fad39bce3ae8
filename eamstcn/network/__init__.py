"""The EamStcn network (needs timm)."""

from __future__ import annotations

from eamstcn.network.model import EamStcn, others_from_masks

__all__ = ["EamStcn", "others_from_masks"]
