"""Checkpoint -> engine bundle: three ONNX graphs (+ FP16, + TensorRT plans), manifest, parity.

Entry points: :func:`eamstcn.export.bundle.export_bundle` (library) and ``eamstcn-export``
(:mod:`eamstcn.export.cli`). Nothing is imported here:
submodules pull in torch, timm and onnx only when used.
"""
