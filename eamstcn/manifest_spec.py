"""The constants of an engine bundle's ``manifest.json`` (schema: docs/ARCHITECTURE.md,
"The engine bundle"): one table for the exporter that writes it and the runtime that
reads it. Standard library only, like :mod:`eamstcn.graph_spec`.
"""

from __future__ import annotations

MANIFEST_NAME = "manifest.json"
FORMAT_TAG = "eamstcn-engines"
#: Bump when the runtime can no longer read what the exporter writes (or the reverse).
FORMAT_VERSION = 1

#: precision -> dtype of every input and output of a file with that precision.
#: INT8 files are QDQ graphs: weights and activations in 8 bits inside, float32 interface.
PRECISION_DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "float32"}
