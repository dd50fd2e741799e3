"""One Mamba (selective state-space) mixer on (B, L, D) tokens, two interchangeable backends.

- ``mamba_ssm.Mamba``: the reference implementation with fused CUDA kernels. It needs CUDA
  tensors, so it is chosen only when ``import mamba_ssm`` succeeds *and* CUDA is available.
- ``MambapyMixer``: mambapy's pure-PyTorch MambaBlock (parallel scan; a sequential scan at
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

    # tokens per block of the inference scan: its (B, 32, ED, N) working set stays in cache
    SCAN_BLOCK = 32

    def selective_scan(self, x, delta, A, B, C, D):
        """The selective scan; on CPU without autograd, ``selective_scan_blocked`` (the same
        recurrence, step by step).

        Our choice: mambapy's parallel scan does log-depth passes over (B, L, ED, N) tensors;
        on a CPU a loop over the L tokens is faster, and it agrees to float rounding (1e-7).
        The parallel scan stays wherever gradients flow (its backward is written for it) and on
        GPUs. ``benchmarks/mamba_scan.py`` times the three.
        """
        if x.device.type == "cpu" and not torch.is_grad_enabled():
            return self.selective_scan_blocked(x, delta, A, B, C, D)
        return super().selective_scan(x, delta, A, B, C, D)

    def selective_scan_blocked(self, x, delta, A, B, C, D):
        """mambapy's sequential scan (``selective_scan_seq``), in blocks of ``SCAN_BLOCK`` tokens.

        The same arithmetic, token by token, for every state h_t = exp(delta_t A) h_{t-1} +
        delta_t B_t x_t and output y_t = C_t h_t + D x_t, so the results agree to float rounding.
        What differs is memory: mambapy builds the (B, L, ED, N) decays, inputs and states of the
        whole sequence, then stacks L states; here each block's are built, written in place (one
        fused multiply-add per token) and reduced to y before the next block, so they stay in
        cache. 2x faster for the demo segmenter's 4096-token stage on one CPU thread.
        """
        length = x.shape[1]
        y = torch.empty_like(x)
        h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])       # (B, ED, N)
        for start in range(0, length, self.SCAN_BLOCK):
            stop = min(length, start + self.SCAN_BLOCK)
            step = delta[:, start:stop, :, None]                   # (B, k, ED, 1)
            decay = torch.exp(step * A)                            # (B, k, ED, N)
            drive = step * B[:, start:stop, None, :] * x[:, start:stop, :, None]
            states = torch.empty_like(decay)
            for t in range(stop - start):
                h = torch.addcmul(drive[:, t], decay[:, t], h, out=states[:, t])
            y[:, start:stop] = (states @ C[:, start:stop, :, None]).squeeze(-1)
        return y + D * x


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
