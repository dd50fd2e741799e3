"""One Mamba (selective state-space) mixer on (B, L, D) tokens, two interchangeable backends.

- ``mamba_ssm.Mamba``: the reference implementation with fused CUDA kernels. It needs CUDA
  tensors, so it is chosen only when ``import mamba_ssm`` succeeds *and* CUDA is available.
- ``MambapyMixer``: mambapy's pure-PyTorch MambaBlock (parallel scan; its sequential scan at
  inference on CPU, where that is faster), runs on any device.

Both hold exactly the same parameters under the same names and shapes (``MAMBA_SSM_KEYS``), and
compute the same function (in_proj -> causal depthwise conv1d -> SiLU -> selective scan with
input-dependent dt, B, C and skip D -> gate by SiLU(z) -> out_proj), so a checkpoint written by one
loads with ``strict=True`` into the other.

``AMDIFF_MAMBA_BACKEND`` selects the backend: unset or ``auto`` (default rule above), ``mambapy``
(force the fallback, e.g. for CPU-reproducible runs) or ``mamba_ssm`` (fail if it is unusable).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from mambapy.mamba import MambaBlock, MambaConfig

ENV_VAR = "AMDIFF_MAMBA_BACKEND"

# State-dict keys of mamba_ssm.modules.mamba_simple.Mamba with its defaults (bias=False,
# conv_bias=True). Written out by hand because mamba_ssm cannot be installed without CUDA.
MAMBA_SSM_KEYS = frozenset({
    "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
    "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight",
})


class MambapyMixer(MambaBlock):
    """mambapy's MambaBlock configured like ``mamba_ssm.Mamba``'s defaults.

    Subclassing (rather than wrapping) keeps the parameter names at the top level, which is what
    makes the state dict identical to mamba_ssm's.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        config = MambaConfig(
            d_model=d_model, n_layers=1, d_state=d_state, d_conv=d_conv, expand_factor=expand,
            dt_rank="auto",  # ceil(d_model / 16), as mamba_ssm
            bias=False, conv_bias=True, inner_layernorms=False, pscan=True, use_cuda=False,
        )
        super().__init__(config)

    def selective_scan(self, x, delta, A, B, C, D):
        """The selective scan; on CPU without autograd, mambapy's sequential form of the same
        recurrence.

        Our choice: mambapy's parallel scan does log-depth passes over (B, L, ED, N) tensors;
        on a CPU the plain loop over L is 1.4-1.9x faster at the shapes of our segmenters
        (``benchmarks/mamba_scan.py``) and agrees to float rounding (1e-7). The parallel scan
        stays wherever gradients flow (its backward is written for it) and on GPUs.
        """
        if x.device.type == "cpu" and not torch.is_grad_enabled():
            return self.selective_scan_seq(x, delta, A, B, C, D)
        return super().selective_scan(x, delta, A, B, C, D)


def _mamba_ssm_usable() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import mamba_ssm  # noqa: F401  (imports only with its compiled CUDA extension)
    except Exception:  # ImportError, or an OSError/RuntimeError from a broken CUDA build
        return False
    return True


def backend_name() -> str:
    """Which backend ``make_mamba`` builds now: ``"mamba_ssm"`` or ``"mambapy"``."""
    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice == "mambapy":
        return "mambapy"
    if choice == "mamba_ssm":
        if not _mamba_ssm_usable():
            raise RuntimeError(
                f"{ENV_VAR}=mamba_ssm but mamba_ssm does not import or CUDA is unavailable")
        return "mamba_ssm"
    if choice == "auto":
        return "mamba_ssm" if _mamba_ssm_usable() else "mambapy"
    raise ValueError(f"{ENV_VAR}={choice!r}: expected auto, mambapy or mamba_ssm")


def make_mamba(d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2) -> nn.Module:
    """A Mamba mixer mapping (B, L, d_model) -> (B, L, d_model) on the active backend."""
    if d_model < 1 or d_state < 1 or d_conv < 1 or expand < 1:
        raise ValueError(f"make_mamba: sizes must be positive, got d_model={d_model}, "
                         f"d_state={d_state}, d_conv={d_conv}, expand={expand}")
    if backend_name() == "mamba_ssm":
        from mamba_ssm import Mamba
        return Mamba(d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand)
    return MambapyMixer(d_model, d_state=d_state, d_conv=d_conv, expand=expand)


def is_mamba_module(module: nn.Module) -> bool:
    """True for a mixer built by ``make_mamba`` (either backend)."""
    if isinstance(module, MambapyMixer):
        return True
    cls = type(module)
    return cls.__name__ == "Mamba" and cls.__module__.startswith("mamba_ssm")
