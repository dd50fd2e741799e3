"""Parameter counts and one-line model summaries for logs and reports."""

from __future__ import annotations

from torch import nn


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in ``module`` (shared tensors counted once; buffers excluded)."""
    # named_parameters() already de-duplicates tensors shared between submodules.
    return sum(p.numel() for _, p in module.named_parameters() if p.requires_grad or not trainable_only)


def describe(module: nn.Module) -> str:
    """One line: class name, parameter count (total and trainable), dtype and float32 size.

    Example: ``DenoiserUNet: 18.42 M parameters (18,420,225; trainable 18,420,225), float32, 70.3 MiB``
    """
    total = count_parameters(module)
    trainable = count_parameters(module, trainable_only=True)
    params = list(module.parameters())
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params}) or ["none"]
    size_mib = sum(p.numel() * p.element_size() for p in params) / 2**20
    return (
        f"{type(module).__name__}: {total / 1e6:.2f} M parameters "
        f"({total:,}; trainable {trainable:,}), {'/'.join(dtypes)}, {size_mib:.1f} MiB"
    )
