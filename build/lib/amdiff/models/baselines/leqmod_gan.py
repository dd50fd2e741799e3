"""LeqMod-GAN (Xia et al. 2024): a 3D conditional GAN denoiser trained with lesion-quantification-
consistent modulation, as in its official repository (REFERENCES.md, mhxiaaa/LeqMod_PET_denoising).

Networks
* Generator: 3D U-Net. Encoder = four double-conv blocks (3x3x3 conv stride 2 -> InstanceNorm ->
  LeakyReLU(0.2) -> 3x3x3 conv -> InstanceNorm -> LeakyReLU) of widths 48/96/192/384, so the
  bottleneck is at 1/16 resolution. Decoder = four double-conv blocks (stride 1) of widths
  384/192/96/48, each followed by nearest x2 upsampling and concatenation with the encoder
  feature (the last skip is the input image itself), then two 3x3x3 conv + LeakyReLU layers
  (24 channels, then 1). It predicts the high-count image directly, not a residual to I_LC, as
  the official code does; the final LeakyReLU keeps positive SUV linear and damps negative
  outputs. InstanceNorm without affine parameters. Spatial sizes must be multiples of 16 (and
  >= 32 in training: InstanceNorm needs more than one voxel at the bottleneck).
* Discriminator: 3D PatchGAN, 4x4x4 convs with spectral norm (base width 32, doubled per
  layer): three stride-2 layers then one stride-1 layer, LeakyReLU(0.2), InstanceNorm on all but
  the first, dropout 0.5 after the second, and a 1x1x1 output conv (no spectral norm, as in the
  official code) giving one least-squares score per patch.
* Conv weights start from N(0, 0.02) (the official ``gaussian_weights_init``).

Intensity scaling: the official code feeds raw SUV. Here both networks see SUV / ``suv_scale``
(10 SUV by default, the fixed normaliser amdiff.models.revision uses), and the generator output
is multiplied back, so ``forward`` is SUV in, SUV out. All losses are computed in SUV, like the
official code, so its loss weights keep their balance.

Losses (official train script defaults)
    L_G = L_GAN + 10 * MSE + 2 * L_qu + 2 * L_le,   L_D = (L_real + L_fake) / 2,
least-squares GAN: L_GAN = mean((D(fake) - 1)^2), L_real = mean((D(real) - 1)^2),
L_fake = mean(D(fake)^2).
* L_qu (multiscale quantification consistency): for cube sizes k = 5, 9, 17, 33 with weights
  0.8, 0.15, 0.03, 0.02, the L1 distance between cube means plus that between cube maxima of
  prediction and target, averaged over cubes. Cubes are taken as in the official ``unfold``:
  stride (k - 1) / 2 = 2, 4, 8, 16 and no padding (incomplete cubes at the far border are
  dropped), which equals avg_pool3d / max_pool3d with that kernel and stride. A cube size larger
  than the patch yields no cube and is skipped (the official code would produce NaN); with 80^3
  or 128^3 training patches all four scales apply.
* L_le (lesion-perceived consistency): mean over voxels with lesion probability p >= 0.2 of
  p * |pred - target|, zero when no voxel qualifies. The official p is the output of a separately
  trained lesion segmentation network. Our reading: we have the ground-truth lesion mask M, so
  p = max(M, G_sigma * M) -- certain (1) inside the annotated lesion and a Gaussian-blurred
  fall-off (sigma = 1 voxel, zero outside the grid) around it, mimicking the soft boundary of a
  segmentation probability; max() keeps small lesions (a blurred single voxel peaks at 0.06,
  below the 0.2 threshold).

Differences from the official code, besides the ones above: none for the discriminator's input by
default — like the official one it sees the image alone; ``conditional_discriminator=True`` conditions
it on I_LC (input [I_LC, image], as in pix2pix).
Discriminator convs use one replicate padding of 1 voxel (official: replicate pad 1 followed by
zero pad 1) and the stride-1 layer is padded by 1 (official: 0), so small demo patches still
yield at least one score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

publication = ("Xia M., Xie H., Liu Q., Zhou B., Wang H., Li B., Rominger A., Shi K., El Fakhri G., "
               "Liu C. LpQcM: adaptable lesion-quantification-consistent modulation for deep "
               "learning low-count PET image denoising (LeqMod-GAN). arXiv:2404.17994, 2024; "
               "github.com/mhxiaaa/LeqMod_PET_denoising")

PAPER = {"enc_channels": (48, 96, 192, 384), "out_hidden": 24, "disc_channels": 32,
         "disc_downsamplings": 3, "disc_dropout": 0.5, "conditional_discriminator": False,
         "suv_scale": 10.0}
DEMO = {"enc_channels": (4, 8, 8, 16), "out_hidden": 4, "disc_channels": 4,
        "disc_downsamplings": 3, "disc_dropout": 0.5, "conditional_discriminator": False,
        "suv_scale": 10.0}

# Official train-script defaults.
WEIGHT_MSE = 10.0
WEIGHT_QU = 2.0
WEIGHT_LE = 2.0
QU_CUBE_SIZES = (5, 9, 17, 33)
QU_CUBE_WEIGHTS = (0.8, 0.15, 0.03, 0.02)
LESION_PROB_THRESHOLD = 0.2
LESION_BLUR_SIGMA_VOX = 1.0
NEGATIVE_SLOPE = 0.2


def _init_conv(module: nn.Module) -> None:
    """Official ``gaussian_weights_init``: conv weights ~ N(0, 0.02), biases left at default."""
    if isinstance(module, nn.Conv3d):
        nn.init.normal_(module.weight, 0.0, 0.02)


class _DoubleConv(nn.Sequential):
    """conv(stride) -> IN -> LReLU -> conv -> IN -> LReLU, all 3x3x3."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(
            nn.Conv3d(cin, cout, 3, stride, 1), nn.InstanceNorm3d(cout), nn.LeakyReLU(NEGATIVE_SLOPE),
            nn.Conv3d(cout, cout, 3, 1, 1), nn.InstanceNorm3d(cout), nn.LeakyReLU(NEGATIVE_SLOPE),
        )


class LeqModGenerator(nn.Module):
    """3D U-Net on normalised intensities: (B, 1, X, Y, Z) -> (B, 1, X, Y, Z)."""

    def __init__(self, enc_channels: Sequence[int] = (48, 96, 192, 384), out_hidden: int = 24) -> None:
        super().__init__()
        enc = [int(c) for c in enc_channels]
        if len(enc) < 1 or min(enc) < 1 or out_hidden < 1:
            raise ValueError(f"bad generator widths enc_channels={enc_channels}, out_hidden={out_hidden}")
        self.levels = len(enc)
        self.down = nn.ModuleList(_DoubleConv(cin, cout, 2) for cin, cout in zip([1] + enc[:-1], enc))
        # Decoder block i works at the resolution of encoder output -(i+1) and is concatenated,
        # after upsampling, with the next-finer encoder output (finally the input image).
        skips = enc[-2::-1] + [1]
        self.up = nn.ModuleList()
        prev = enc[-1]
        for i, width in enumerate(enc[::-1]):
            self.up.append(_DoubleConv(prev if i == 0 else prev + skips[i - 1], width, 1))
            prev = width
        self.head = nn.Sequential(
            nn.Conv3d(prev + 1, out_hidden, 3, 1, 1), nn.LeakyReLU(NEGATIVE_SLOPE),
            nn.Conv3d(out_hidden, 1, 3, 1, 1), nn.LeakyReLU(NEGATIVE_SLOPE),
        )
        self.apply(_init_conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for block in self.down:
            feats.append(block(feats[-1]))
        h = feats.pop()
        for block in self.up:
            h = F.interpolate(block(h), scale_factor=2, mode="nearest")
            h = torch.cat([h, feats.pop()], dim=1)
        return self.head(h)


class PatchDiscriminator(nn.Module):
    """3D PatchGAN with spectral norm: (B, C, X, Y, Z) -> (B, 1, x, y, z) least-squares scores."""

    def __init__(self, in_channels: int = 2, channels: int = 32, downsamplings: int = 3,
                 dropout: float = 0.5) -> None:
        super().__init__()
        if in_channels < 1 or channels < 1 or downsamplings < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"bad discriminator settings in_channels={in_channels}, channels={channels}, "
                             f"downsamplings={downsamplings}, dropout={dropout}")
        layers: list[nn.Module] = []
        widths = [in_channels] + [channels * 2**i for i in range(downsamplings + 1)]
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            conv = nn.Conv3d(cin, cout, 4, stride=2 if i < downsamplings else 1, padding=1,
                             padding_mode="replicate")
            _init_conv(conv)  # before spectral_norm registers its power-iteration vectors
            layers.append(spectral_norm(conv))
            if i > 0:
                layers.append(nn.InstanceNorm3d(cout))
            layers.append(nn.LeakyReLU(NEGATIVE_SLOPE))
            if i == 1 and dropout > 0:
                layers.append(nn.Dropout(dropout))
        out = nn.Conv3d(widths[-1], 1, 1)
        _init_conv(out)
        layers.append(out)
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LeqModGAN(nn.Module):
    """Generator + discriminator; ``forward(i_lc)`` maps low-count SUV to high-count SUV."""

    def __init__(self, enc_channels: Sequence[int] = (48, 96, 192, 384), out_hidden: int = 24,
                 disc_channels: int = 32, disc_downsamplings: int = 3, disc_dropout: float = 0.5,
                 conditional_discriminator: bool = False, suv_scale: float = 10.0) -> None:
        super().__init__()
        if not suv_scale > 0:
            raise ValueError(f"LeqModGAN needs suv_scale > 0, got {suv_scale}")
        self.generator = LeqModGenerator(enc_channels, out_hidden)
        self.conditional_discriminator = bool(conditional_discriminator)
        self.discriminator = PatchDiscriminator(2 if self.conditional_discriminator else 1,
                                                disc_channels, disc_downsamplings, disc_dropout)
        self.register_buffer("suv_scale", torch.tensor(float(suv_scale)))

    def _check(self, x: torch.Tensor, name: str) -> None:
        multiple = 2**self.generator.levels
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"LeqModGAN: {name} must have shape (B, 1, X, Y, Z), got {tuple(x.shape)}")
        if any(s % multiple for s in x.shape[2:]):
            raise ValueError(f"LeqModGAN: {name} spatial size {tuple(x.shape[2:])} must be a multiple "
                             f"of {multiple}")

    def forward(self, i_lc: torch.Tensor) -> torch.Tensor:
        self._check(i_lc, "i_lc")
        return self.generator(i_lc / self.suv_scale) * self.suv_scale

    def discriminate(self, i_lc: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Patch scores for ``image`` (SUV), conditioned on ``i_lc`` (SUV) if configured so."""
        x = torch.cat([i_lc, image], dim=1) if self.conditional_discriminator else image
        return self.discriminator(x / self.suv_scale)


def build(**kwargs) -> LeqModGAN:
    return LeqModGAN(**kwargs)


# ---------------------------------------------------------------------------- losses

def cube_stat_l1(pred: torch.Tensor, target: torch.Tensor,
                 size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(mean-term, max-term) of L_qu at one cube size, or None if no cube fits.

    Cubes of edge ``size`` at stride (size - 1) // 2, no padding; each term is the mean over all
    cubes (and batch, channels) of |stat(pred cube) - stat(target cube)|.
    """
    if any(s < size for s in pred.shape[2:]):
        return None
    stride = max((size - 1) // 2, 1)
    mean_term = (F.avg_pool3d(pred, size, stride) - F.avg_pool3d(target, size, stride)).abs().mean()
    max_term = (F.max_pool3d(pred, size, stride) - F.max_pool3d(target, size, stride)).abs().mean()
    return mean_term, max_term


def quantification_loss(pred: torch.Tensor, target: torch.Tensor, sizes: Sequence[int] = QU_CUBE_SIZES,
                        weights: Sequence[float] = QU_CUBE_WEIGHTS) -> torch.Tensor:
    """L_qu = sum_k w_k (L1 of cube means + L1 of cube maxima); cube sizes that do not fit skipped."""
    if pred.shape != target.shape:
        raise ValueError(f"L_qu: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    total = pred.new_zeros(())
    for size, weight in zip(sizes, weights, strict=True):
        terms = cube_stat_l1(pred, target, size)
        if terms is not None:
            total = total + weight * (terms[0] + terms[1])
    return total


def lesion_probability_map(lesion: torch.Tensor, sigma_vox: float = LESION_BLUR_SIGMA_VOX) -> torch.Tensor:
    """p = max(M, G_sigma * M) for a lesion mask (B, X, Y, Z) -> (B, 1, X, Y, Z) float in [0, 1].

    Separable Gaussian (truncated at 3 sigma, normalised), zero padding: no lesion outside the grid.
    """
    if lesion.ndim != 4:
        raise ValueError(f"lesion mask must have shape (B, X, Y, Z), got {tuple(lesion.shape)}")
    mask = (lesion > 0).to(torch.float32).unsqueeze(1)
    if sigma_vox <= 0:
        return mask
    radius = max(1, math.ceil(3 * sigma_vox))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=lesion.device)
    kernel = torch.exp(-0.5 * (offsets / sigma_vox) ** 2)
    kernel = kernel / kernel.sum()
    blurred = mask
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        padding = [0, 0, 0]
        padding[axis] = radius
        blurred = F.conv3d(blurred, kernel.view(shape), padding=tuple(padding))
    return torch.maximum(mask, blurred.clamp(0.0, 1.0))


def lesion_loss(pred: torch.Tensor, target: torch.Tensor, prob: torch.Tensor,
                threshold: float = LESION_PROB_THRESHOLD) -> torch.Tensor:
    """L_le = mean over voxels with p >= threshold of p * |pred - target|; 0 if none qualifies."""
    if not pred.shape == target.shape == prob.shape:
        raise ValueError(f"L_le: shapes {tuple(pred.shape)}, {tuple(target.shape)}, "
                         f"{tuple(prob.shape)} differ")
    sel = prob >= threshold
    if not bool(sel.any()):
        return (pred * 0.0).sum()  # zero that keeps the graph
    return (prob[sel] * (pred[sel] - target[sel]).abs()).mean()


def _lsgan(scores: torch.Tensor, real: bool) -> torch.Tensor:
    return (scores - (1.0 if real else 0.0)).pow(2).mean()


def _batch(batch: Mapping, keys: Sequence[str]) -> list[torch.Tensor]:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"LeqMod-GAN loss: batch lacks {missing}")
    return [batch[k] for k in keys]


def generator_loss(model: LeqModGAN, batch: Mapping, weight_mse: float = WEIGHT_MSE,
                   weight_qu: float = WEIGHT_QU, weight_le: float = WEIGHT_LE) -> dict[str, torch.Tensor]:
    """total = gan + 10 mse + 2 qu + 2 le (terms returned unweighted, all in SUV units).

    batch: "lc", "hc" (B, 1, X, Y, Z) SUV; "lesion" (B, X, Y, Z) ground-truth mask, blurred into the
    lesion-probability map (module docstring).
    """
    lc, hc, lesion = _batch(batch, ("lc", "hc", "lesion"))
    pred = model(lc)
    gan = _lsgan(model.discriminate(lc, pred), real=True)
    mse = F.mse_loss(pred, hc)
    qu = quantification_loss(pred, hc)
    le = lesion_loss(pred, hc, lesion_probability_map(lesion).to(pred.dtype))
    total = gan + weight_mse * mse + weight_qu * qu + weight_le * le
    return {"total": total, "gan": gan, "mse": mse, "qu": qu, "le": le}


def discriminator_loss(model: LeqModGAN, batch: Mapping,
                       fake: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """total = (mean((D(lc, hc) - 1)^2) + mean(D(lc, G(lc))^2)) / 2; G is not trained by it.

    ``fake``: a generator output already computed for this batch (detached here); else G runs
    under no_grad.
    """
    lc, hc = _batch(batch, ("lc", "hc"))
    if fake is None:
        with torch.no_grad():
            fake = model(lc)
    real = _lsgan(model.discriminate(lc, hc), real=True)
    fake_term = _lsgan(model.discriminate(lc, fake.detach()), real=False)
    return {"total": 0.5 * (real + fake_term), "real": real, "fake": fake_term}


# Uniform interface of the comparison models: the generator's publication loss.
loss = generator_loss
