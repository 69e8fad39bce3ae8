"""The one exception type of the exporter that users see."""

from __future__ import annotations


class ExportError(ValueError):
    """An export that cannot be done; the message is one line meant for the user."""
