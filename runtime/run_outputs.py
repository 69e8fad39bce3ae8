"""A run's outputs in ``--output``: masks/, overlay.mp4, stats.csv (and first-mask.png when
the first objects came from boxes or points), made only at the first segmented frame, so
that a run refused before it leaves no folder behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from eamstcn.runtime.lost import LostObjects
from eamstcn.runtime.marking import write_first_mask
from eamstcn.runtime.run_options import RunError
from eamstcn.runtime.sinks import AsyncOutputWriter, OutputWriter
from eamstcn.runtime.timing import StepStats

#: Frames per second of overlay.mp4 when the source does not say (a frame folder).
DEFAULT_FPS = 25.0


class RunOutputs:
    """Opens the writer at the first :meth:`submit`; :meth:`close` drains its thread, so
    every frame segmented is written, on Ctrl-C and errors too."""

    def __init__(
        self, folder: Path, fps: float | None, device: torch.device, *, queue_size: int, lost_after: int,
        first_ids: np.ndarray | None, notify: Callable[[str], None], overlay: bool = True,
    ) -> None:
        """``first_ids`` (H, W) uint8: a first mask derived from prompts, written beside the
        outputs for reuse with ``--mask``; None when the user gave the mask file."""
        self.folder = folder
        self.fps = fps or DEFAULT_FPS
        self.device = device
        self.queue_size = queue_size
        self.lost_after = lost_after
        self.overlay = overlay
        self.first_ids = first_ids
        self.notify = notify
        self._writer: AsyncOutputWriter | None = None
        self._lost: LostObjects | None = None

    def submit(self, index: int, frame: np.ndarray, labels: torch.Tensor, stats: StepStats | None) -> None:
        """Frame (H, W, 3) uint8 RGB on the host; labels (H, W) uint8 ids on the device."""
        if self._writer is None:
            self._writer = self._open()
            if self.first_ids is not None:
                write_first_mask(self.folder, self.first_ids, self.notify)
        self._writer.submit(index, frame, labels, stats)

    def restart(self, index: int) -> None:
        """A new stream (new ids) starts at frame ``index``: lost-object tracking forgets the
        old ids from that frame on."""
        if self._lost is not None:
            self._lost.restart(index)

    def _open(self) -> AsyncOutputWriter:
        try:
            self._lost = LostObjects(self.lost_after, self.notify) if self.lost_after > 0 else None
            sink = OutputWriter(self.folder, fps=self.fps, video=self.overlay, notify=self.notify, lost=self._lost)
        except OSError as error:
            raise RunError(f"cannot write to --output {self.folder}: {error.strerror or error}") from None
        return AsyncOutputWriter(sink, self.device, max_pending=self.queue_size)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> RunOutputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
