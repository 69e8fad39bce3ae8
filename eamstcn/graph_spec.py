"""Names of the three exported graphs and of the tensors that cross their boundaries.

Shared by the exporter (which writes them into the manifest) and the runtime (which
checks the manifest against them). Standard library only: the runtime imports this.
"""

from __future__ import annotations

KEY_ENCODER = "key_encoder"
VALUE_ENCODER = "value_encoder"
DECODER = "decoder"
GRAPHS = (KEY_ENCODER, VALUE_ENCODER, DECODER)

#: graph -> (input names, output names), in positional order.
GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    KEY_ENCODER: (("image",), ("key", "f16x", "f8", "f4")),
    VALUE_ENCODER: (("image", "masks", "others", "f16x"), ("value",)),
    DECODER: (("readout", "f16x", "f8", "f4"), ("logits",)),
}

#: inputs/outputs whose first axis is the object count K (dynamic in the graphs).
OBJECT_AXIS_TENSORS = frozenset({"masks", "others", "value", "readout", "logits"})

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: total stride of the encoders: padded frame sizes are multiples of this.
STRIDE = 16
