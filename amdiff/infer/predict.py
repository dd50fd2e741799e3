"""Whole-volume AMDiff inference with MONAI's sliding-window inferer.

Diffusion sampling runs on the whole volume: one x_t for the image, and at every sampler step
the noise prediction is assembled from overlapping patches with Gaussian blending
(``monai.inferers.sliding_window_inference``), so neighbouring patches share one trajectory and
no seams appear. DDPM ancestral sampling uses all T steps (Eq. 4); DDIM uses ``steps`` of them.

Training and inference see the same statistics: every network whose output depends on the
extent of its input (GroupNorm/InstanceNorm layers, the Mamba scan of the segmenters, window
attention) runs by sliding window with windows of the training patch size (``patch_size`` here
must equal ``training.patch_size``; the config check enforces it). The only exception is a
context-free revision module (``models.revision.norm: none``, no normalisation layer): each of
its output voxels depends only on a few neighbouring input voxels, so it runs on the whole
volume, giving exactly what it gives on a patch, without patch seams. A GroupNorm revision
module runs by sliding window like the others. A fixed seed per case makes every prediction
reproducible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from amdiff.config import schema_default
from amdiff.diffusion.samplers import sample
from amdiff.errors import InputError
from amdiff.models.amdiff import AMDiff

log = logging.getLogger(__name__)


def check_window(state: dict, config: dict, checkpoint) -> None:
    """Inference windows must be the patches the model trained on (same normalisation statistics):
    one-line InputError naming the checkpoint otherwise."""
    trained = ((state.get("config") or {}).get("training") or {}).get("patch_size")
    window = config["inference"]["patch_size"]
    if trained is not None and list(trained) != list(window):
        raise InputError(checkpoint, f"trained on {list(trained)} patches, but inference.patch_size is "
                                     f"{list(window)}; set it to the training patch size")


def warn_voxel_size(state: dict, voxel_size_mm, image) -> bool:
    """Log a warning (and return True) when ``image``'s voxels differ by more than 5 % on an axis
    from every voxel size the checkpoint's model trained on (``voxel_size_mm``, recorded by the
    trainer; older checkpoints lack it and are not checked). The networks see voxels, not
    millimetres: a lesion spans other voxel counts, and the learned noise texture has another
    scale. Our choice: a warning, not an error, since the paper applies its model trained on
    2.04 mm mCT images to 1.65 mm Vision images without saying that it resampled them."""
    trained = state.get("voxel_size_mm")
    if not trained or any(np.allclose(voxel_size_mm, size, rtol=0.05, atol=0) for size in trained):
        return False
    shown = " or ".join(" x ".join(f"{v:g}" for v in size) for size in trained)
    log.warning("%s: voxels of %s mm, but the model trained on %s mm voxels; resample the image "
                "to that grid for the results the model was trained to give", image,
                " x ".join(f"{v:.3g}" for v in voxel_size_mm), shown)
    return True


@dataclass
class Prediction:
    denoised: np.ndarray          # P_HCR in SUV, full range (P_HC for the no-revision ablation)
    lesion: np.ndarray | None     # uint8 binary (None for a denoiser-only model)
    organs: np.ndarray | None     # uint8 labels 0..7
    uncertainty: np.ndarray | None = None   # voxel-wise SD over samples (SUV), if samples > 1


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad spatial dims to a multiple (the networks downsample by 8); return the crop back."""
    pads, crop = [], []
    for n in reversed(x.shape[2:]):
        extra = (-n) % multiple
        pads += [0, extra]
    for n in x.shape[2:]:
        crop.append(slice(0, n))
    return torch.nn.functional.pad(x, pads), (slice(None), slice(None), *crop)


# inference.precision -> the autocast dtype of the networks' window passes (None: float32)
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _in_precision(predictor, dev: torch.device, precision: str):
    """``predictor`` run under autocast at ``precision``, its outputs returned in float32.

    Our choice: only the networks' window passes are cast; stitching, the sampler's updates
    and the context-free revision stay in float32, so reduced precision touches the noise
    estimates, not the trajectory's arithmetic.
    """
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return predictor

    def run(patch):
        with torch.autocast(dev.type, dtype=dtype):
            out = predictor(patch)
        if isinstance(out, dict):
            return {key: value.float() for key, value in out.items()}
        return out.float()
    return run


# inference.memory_format -> torch's layout of the networks' weights and window tensors
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last_3d}


def _in_layout(model: torch.nn.Module, inference: dict):
    """Put ``model``'s 5-D weights in ``inference.memory_format`` and return the matching
    conversion of a window batch.

    Our choice: channels_last (NDHWC) is a layout, not a different computation: oneDNN and
    cuDNN pick faster 3-D convolution kernels for it, and the result differs from the
    contiguous one only by float rounding (another summation order). Stitching and the
    sampler see ordinary tensors either way.
    """
    layout = MEMORY_FORMATS[inference.get("memory_format", schema_default("inference.memory_format"))]
    model.to(memory_format=layout)     # in place; 1-D to 4-D parameters are left as they are
    return lambda patch: patch.contiguous(memory_format=layout)


def _windows(inference: dict, dev: torch.device, model: torch.nn.Module):
    roi = tuple(inference["patch_size"])
    overlap = float(inference["overlap"])
    sw_batch = int(inference["sw_batch_size"])
    precision = inference.get("precision", schema_default("inference.precision"))
    to_layout = _in_layout(model, inference)

    def run(inputs, predictor):
        in_precision = _in_precision(predictor, dev, precision)
        return sliding_window_inference(inputs, roi, sw_batch, lambda patch: in_precision(to_layout(patch)),
                                        overlap=overlap, mode="gaussian", sw_device=dev, device=dev)
    return run


@torch.no_grad()
def predict_baseline(model: torch.nn.Module, lc_suv: np.ndarray, inference: dict,
                     denoised_suv: np.ndarray | None = None, device: str = "cpu") -> Prediction:
    """A comparison model on one volume, by sliding window: a denoiser maps I_LC to the
    high-count estimate; a segmenter (``denoised_suv`` given: the Med-DDPM output) maps
    [I_LC, denoised] to lesion and organ labels."""
    model.eval()
    dev = torch.device(device)
    windows = _windows(inference, dev, model)
    lc, crop = _pad_to_multiple(torch.as_tensor(lc_suv, dtype=torch.float32)[None, None].to(dev), 8)
    if denoised_suv is None:
        out = windows(lc, model).clamp(min=0.0)   # SUV is non-negative
        return Prediction(denoised=out[crop][0, 0].cpu().numpy().astype(np.float32), lesion=None, organs=None)
    den, _ = _pad_to_multiple(torch.as_tensor(denoised_suv, dtype=torch.float32)[None, None].to(dev), 8)
    seg = windows(torch.cat([lc, den], 1), model)
    return Prediction(denoised=np.asarray(denoised_suv, dtype=np.float32),
                      lesion=seg["lesion"].argmax(1, keepdim=True)[crop][0, 0].to(torch.uint8).cpu().numpy(),
                      organs=seg["organs"].argmax(1, keepdim=True)[crop][0, 0].to(torch.uint8).cpu().numpy())


def _revise(model: AMDiff, p_hc: torch.Tensor, lc: torch.Tensor, windows) -> torch.Tensor:
    """P_HCR on the whole volume: at once if f_rev is context-free, else by sliding window."""
    if model.revision is None or model.revision.context_free:
        return model.revise(p_hc, lc)
    return windows(torch.cat([p_hc, lc], 1), lambda patch: model.revise(patch[:, :1], patch[:, 1:]))


@torch.no_grad()
def predict_volume(model: AMDiff, lc_suv: np.ndarray, inference: dict, seed: int,
                   device: str = "cpu", progress: bool = False) -> Prediction:
    """Denoise and segment one low-count SUV volume."""
    model.eval()
    dev = torch.device(device)
    windows = _windows(inference, dev, model)
    lc, crop = _pad_to_multiple(torch.as_tensor(lc_suv, dtype=torch.float32)[None, None].to(dev), 8)

    def eps_fn(x_t, t):
        def predictor(patch):
            return model.denoiser(patch[:, :1], patch[:, 1:], t[:1].expand(patch.shape[0]))
        out = windows(torch.cat([x_t, model.to_diffusion(lc)], 1), predictor)
        # the network's output stitched over windows, as the noise the sampler steps with
        # (pointwise, so converting after stitching is converting each window)
        return out if model.prediction == "eps" else model.schedule.eps_from_v(x_t, t, out)

    generator = torch.Generator(device=dev).manual_seed(int(seed))
    method = inference["sampler"]
    steps = None if method == "ddpm" else int(inference["steps"])
    samples = []
    for _ in range(int(inference["samples"])):
        x0 = sample(eps_fn, tuple(lc.shape), model.schedule, method=method, steps=steps,
                    generator=generator, device=dev, progress=progress)
        samples.append(_revise(model, model.to_suv(x0.clamp(-1, 1)), lc, windows))
    stack = torch.stack(samples)
    p_hcr = stack.mean(0).clamp(min=0.0)   # SUV is non-negative (the revision output may dip below 0)
    uncertainty = stack.std(0, unbiased=True)[crop][0, 0].cpu().numpy() if len(samples) > 1 else None
    denoised = p_hcr[crop][0, 0].cpu().numpy().astype(np.float32)
    if model.segmenter is None:
        return Prediction(denoised=denoised, lesion=None, organs=None, uncertainty=uncertainty)
    seg = windows(torch.cat([p_hcr, lc], 1), lambda patch: model.segment(patch[:, :1], patch[:, 1:]))
    lesion = seg["lesion"].argmax(1, keepdim=True).to(torch.uint8)
    organs = seg["organs"].argmax(1, keepdim=True).to(torch.uint8)
    return Prediction(denoised=denoised, lesion=lesion[crop][0, 0].cpu().numpy(),
                      organs=organs[crop][0, 0].cpu().numpy(), uncertainty=uncertainty)
