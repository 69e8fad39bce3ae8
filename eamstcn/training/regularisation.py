"""Training-only settings of the network's layers: BatchNorm momentum and stochastic depth.

They change nothing at inference (eval mode), so they live in :class:`TrainConfig`, not in
the model config, and are applied to a built network by :func:`apply_regularisation`.
"""

from __future__ import annotations

from torch import nn

from eamstcn.network import EamStcn


def set_bn_momentum(module: nn.Module, momentum: float) -> int:
    """Every BatchNorm under ``module`` (timm's BatchNormAct2d included); returns how many."""
    count = 0
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.momentum = momentum
            count += 1
    return count


def trunk_blocks(trunk: nn.Module) -> list[nn.Module]:
    """The trunk's blocks in order (timm keeps them as stages of blocks)."""
    return [block for stage in trunk.blocks for block in (stage if isinstance(stage, nn.Sequential) else [stage])]


def set_trunk_drop_path(trunk: nn.Module, rate: float) -> list[float]:
    """Stochastic depth rising linearly over the trunk's blocks: block i of N gets
    ``rate * i / N`` (EfficientNet's drop-connect rule, over the blocks we keep: the
    trunk stops at stride 16). Returns the rates set, one per block."""
    from timm.layers import DropPath  # lazily: the runtime imports without timm

    blocks = trunk_blocks(trunk)
    rates = []
    for index, block in enumerate(blocks):
        block_rate = rate * index / len(blocks)
        if hasattr(block, "drop_path"):
            block.drop_path = DropPath(block_rate) if block_rate > 0 else nn.Identity()
            rates.append(block_rate)
    return rates


def apply_regularisation(network: EamStcn, bn_momentum: float, drop_path: float, expansion_drop_path: float) -> None:
    """BatchNorm momentum everywhere, drop path in both trunks and the expansion residual."""
    set_bn_momentum(network, bn_momentum)
    set_trunk_drop_path(network.key_trunk, drop_path)
    set_trunk_drop_path(network.value_trunk, drop_path)
    network.expansion.drop_path = expansion_drop_path
