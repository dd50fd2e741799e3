"""Med-SAM comparison segmenter: a SAM-Med3D-style network made fully automatic (Wang et al. 2024).

Structure (REFERENCES.md, SAM-Med3D section; submodule and parameter names follow SAM-Med3D so
that a SAM-Med3D checkpoint's ``image_encoder.*`` tensors load one-to-one, see `load_sam_med3d`):

- image_encoder: 3D ViT (ViT-B at paper size: 128^3 input, patch 16 -> 8^3 tokens, dim 768,
  depth 12, heads 12, MLP ratio 4), absolute positional embedding sized for the patch grid,
  decomposed relative positions in every block, window attention (window 14, zero-padded as in
  SAM/ViTDet, so the 8^3 grid is one padded window) except the global blocks 2, 5, 8, 11 — the
  ``vit_b_ori`` build of SAM-Med3D; then a neck (1x1x1 conv, LayerNorm, 3x3x3 conv, LayerNorm)
  to 384 channels.
- prompt_encoder: SAM's dense random-Fourier positional encoding of the embedding grid and the
  "no mask" dense embedding. Clicks are replaced by learned prompts: one learned set of sparse
  prompt tokens per output head (lesion, organs), so the output needs no user interaction.
  SAM-Med3D's point and mask prompts are therefore not built.
- mask_decoder: SAM's two-way transformer (depth 2: token self-attention, token-to-image and
  image-to-token cross attention with internal dim halved, MLP; a final token-to-image attention),
  run once per head on [that head's mask tokens, that head's prompt tokens]; the transformed image
  embedding is upscaled x4 by two transposed convs (1/4 input resolution, 32^3 at 128^3 input)
  and each mask token's hypernetwork MLP turns it into the weights of one class map. SAM's IoU
  token and head are dropped (nothing selects among masks here). Differences from SAM: one mask
  token per class (lesion head [background, lesion], organ head [background + 7 organs]) and the
  class maps of a head compete through a softmax (the loss below), not independent sigmoids.
  Logits are upsampled trilinearly to the input size.

Input: x = [I_LC, denoised] in SUV, (B, 2, X, Y, Z), every side a multiple of the patch size
(ValueError otherwise). SAM-Med3D takes one z-score-normalised channel; here the intensities go
through asinh(SUV) (as amdiff.models.segmenter.normalise_suv; a fixed transform, so the SUV
scale survives, unlike per-volume z-scores) and the patch embedding has 2 input channels. A
1-channel checkpoint initialises both channels with half its kernel, so two identical channels
give exactly the pretrained response. A grid other than img_size/patch interpolates the absolute
positional embedding trilinearly (and the relative tables of global blocks linearly), as SAM does
for its relative tables.

Parameters at paper size (2 input channels): image encoder 96.07 M (ViT-B blocks 85.1 M, 3D patch
embedding 6.3 M, neck 4.3 M of which 4.0 M is the 3x3x3 conv, positional embedding 0.4 M), prompt
encoder 1,920 (the Fourier matrix is a buffer), mask decoder 9.30 M (10 hypernetwork MLPs: 3.1 M);
105.37 M in all. SAM-Med3D vit_b_ori itself (1 channel, 4 mask tokens + IoU head, mask-prompt
encoder), counted from its code: 100.51 M.

Loss: SAM-Med3D trains with MONAI DiceCELoss on sigmoid masks over simulated clicks; for the
paper's comparison every segmenter gets the same inputs and the AMDiff segmentation loss
(amdiff.losses.segmentation, form "focal_tversky"), so `loss` uses that.
"""

from __future__ import annotations

import argparse
import math
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from amdiff.errors import InputError
from amdiff.losses.regularizers import WeightsLike
from amdiff.models.baselines.common import amdiff_segmentation_loss, segmenter_input
from amdiff.models.segmenter import normalise_suv

publication = ("Wang H., Guo S., Ye J., et al. SAM-Med3D: towards general-purpose segmentation models "
               "for volumetric medical images. arXiv:2310.15161 (2024), ECCV 2024 workshops; "
               "github.com/uni-medical/SAM-Med3D")

HEADS = {"lesion": 2, "organs": 8}  # output head -> number of classes (softmax channels)
IN_CHANNELS = 2

PAPER = dict(img_size=128, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
             out_chans=384, use_rel_pos=True, window_size=14, global_attn_indexes=(2, 5, 8, 11),
             decoder_depth=2, decoder_heads=8, decoder_mlp_dim=2048, n_prompt_tokens=2)
# window 3 on a 4^3 grid exercises the padded-window path of the paper configuration
DEMO = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=4.0,
            out_chans=32, use_rel_pos=True, window_size=3, global_attn_indexes=(1,),
            decoder_depth=2, decoder_heads=4, decoder_mlp_dim=64, n_prompt_tokens=2)

CHECKPOINT_PREFIX = "image_encoder."


# ---------------------------------------------------------------------------- shared pieces
class LayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of (B, C, X, Y, Z) maps (SAM's LayerNorm3d, eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.movedim(1, -1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)


class MLPBlock(nn.Module):
    """Two linear layers with an activation between (names lin1/lin2 as in SAM)."""

    def __init__(self, dim: int, hidden: int, act: type[nn.Module] = nn.GELU):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


# ---------------------------------------------------------------------------- image encoder
def rel_pos_table(size: int, table: torch.Tensor) -> torch.Tensor:
    """(size, size, C) embeddings of the offsets i - j, i, j < size, from a (2L-1, C) table.

    A table made for another length is linearly resampled to 2*size-1 entries first.
    """
    n = 2 * size - 1
    if table.shape[0] != n:
        table = F.interpolate(table.T.unsqueeze(0), size=n, mode="linear").squeeze(0).T
    idx = torch.arange(size, device=table.device)
    return table[idx[:, None] - idx[None, :] + size - 1]


def window_partition(x: torch.Tensor, w: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(B, D, H, W, C) -> (B * n_windows, w, w, w, C), zero-padding each side up to a multiple of w."""
    b, d, h, wd, c = x.shape
    pads = [(-s) % w for s in (d, h, wd)]
    x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
    dp, hp, wp = d + pads[0], h + pads[1], wd + pads[2]
    x = x.view(b, dp // w, w, hp // w, w, wp // w, w, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(-1, w, w, w, c), (dp, hp, wp)


def window_unpartition(windows: torch.Tensor, w: int, padded: tuple[int, int, int],
                       size: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of `window_partition`: back to (B, D, H, W, C) with the padding cut off."""
    dp, hp, wp = padded
    b = windows.shape[0] // ((dp // w) * (hp // w) * (wp // w))
    x = windows.view(b, dp // w, hp // w, wp // w, w, w, w, -1).permute(0, 1, 4, 2, 5, 3, 6, 7)
    x = x.reshape(b, dp, hp, wp, -1)
    return x[:, :size[0], :size[1], :size[2]].contiguous()


class Attention(nn.Module):
    """Multi-head self-attention on a (B, D, H, W, C) token grid with decomposed relative
    positions (MViTv2/SAM: bias = q . R_d[i-j] + q . R_h[..] + q . R_w[..], q unscaled)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, use_rel_pos: bool = True,
                 input_size: int = 8):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:  # zero-initialised as in SAM: starts as plain attention
            self.rel_pos_d = nn.Parameter(torch.zeros(2 * input_size - 1, head_dim))
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size - 1, head_dim))

    def rel_pos_bias(self, q: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
        """Additive attention bias (B, heads, N, N) from queries (B, heads, N, head_dim)."""
        d, h, w = size
        b, nh, n, c = q.shape
        rq = q.reshape(b, nh, d, h, w, c)
        bd = torch.einsum("bndhwc,dkc->bndhwk", rq, rel_pos_table(d, self.rel_pos_d))
        bh = torch.einsum("bndhwc,hkc->bndhwk", rq, rel_pos_table(h, self.rel_pos_h))
        bw = torch.einsum("bndhwc,wkc->bndhwk", rq, rel_pos_table(w, self.rel_pos_w))
        bias = bd[..., :, None, None] + bh[..., None, :, None] + bw[..., None, None, :]
        return bias.reshape(b, nh, n, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w, c = x.shape
        n = d * h * w
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.rel_pos_bias(q, (d, h, w)) if self.use_rel_pos else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale 1/sqrt(head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, d, h, w, c))


class Block3D(nn.Module):
    """Pre-norm ViT block; window_size > 0 attends within zero-padded windows (SAM/ViTDet)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, use_rel_pos: bool,
                 window_size: int, grid: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, use_rel_pos=use_rel_pos,
                              input_size=window_size if window_size > 0 else grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if self.window_size > 0:
            size = tuple(y.shape[1:4])
            y, padded = window_partition(y, self.window_size)
            y = window_unpartition(self.attn(y), self.window_size, padded, size)
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchEmbed3D(nn.Module):
    """Non-overlapping p^3 patches -> tokens, (B, C_in, X, Y, Z) -> (B, X/p, Y/p, Z/p, dim)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)


class ImageEncoderViT3D(nn.Module):
    """3D ViT with neck: (B, C_in, X, Y, Z) -> (B, out_chans, X/p, Y/p, Z/p)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, depth: int,
                 num_heads: int, mlp_ratio: float, out_chans: int, use_rel_pos: bool,
                 window_size: int, global_attn_indexes: tuple[int, ...]):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        grid = img_size // patch_size
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim)
        # SAM zero-initialises pos_embed (it is always loaded); we may train from scratch
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, grid, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(
            Block3D(embed_dim, num_heads, mlp_ratio, use_rel_pos,
                    0 if i in global_attn_indexes else window_size, grid)
            for i in range(depth))
        self.neck = nn.Sequential(
            nn.Conv3d(embed_dim, out_chans, kernel_size=1, bias=False), LayerNorm3d(out_chans),
            nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False), LayerNorm3d(out_chans))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        pos = self.pos_embed
        if pos.shape[1:4] != x.shape[1:4]:  # another grid than the pretraining one
            pos = F.interpolate(pos.permute(0, 4, 1, 2, 3), size=x.shape[1:4], mode="trilinear",
                                align_corners=False).permute(0, 2, 3, 4, 1)
        x = x + pos
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 4, 1, 2, 3))


# ---------------------------------------------------------------------------- prompt encoder
class PositionEmbeddingRandom3D(nn.Module):
    """SAM's positional encoding: sin/cos of random Gaussian projections of [-1, 1] coordinates."""

    def __init__(self, num_pos_feats: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, num_pos_feats))

    def forward(self, size: tuple[int, int, int]) -> torch.Tensor:
        """(2 * num_pos_feats, *size) encoding of the voxel centres of a grid."""
        g = self.positional_encoding_gaussian_matrix
        axes = [(torch.arange(s, device=g.device, dtype=g.dtype) + 0.5) / s for s in size]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (*size, 3) in (0, 1)
        proj = 2 * math.pi * ((2 * coords - 1) @ g)
        return torch.cat([proj.sin(), proj.cos()], dim=-1).permute(3, 0, 1, 2)


class AutoPromptEncoder3D(nn.Module):
    """Learned sparse prompt tokens per head instead of clicks, plus SAM's dense no-mask embedding."""

    def __init__(self, embed_dim: int, n_prompt_tokens: int):
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"prompt embedding dim (out_chans) must be even, got {embed_dim}")
        self.embed_dim = embed_dim
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 2)
        # N(0, 1) like SAM's point-type embeddings, whose sum with a sin/cos code replaces a click
        self.sparse_prompts = nn.ParameterDict(
            {head: nn.Parameter(torch.randn(n_prompt_tokens, embed_dim)) for head in HEADS})
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self, size: tuple[int, int, int]) -> torch.Tensor:
        return self.pe_layer(size).unsqueeze(0)

    def forward(self, head: str, batch: int, size: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse (B, n_prompt_tokens, dim) and dense (B, dim, *size) prompt embeddings of a head."""
        sparse = self.sparse_prompts[head].unsqueeze(0).expand(batch, -1, -1)
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(batch, -1, *size)
        return sparse, dense


# ---------------------------------------------------------------------------- mask decoder
class TokenAttention(nn.Module):
    """SAM decoder attention: separate q/k/v projections to dim/downsample, multi-head, out proj."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1):
        super().__init__()
        internal = dim // downsample_rate
        if internal % num_heads:
            raise ValueError(f"decoder_heads {num_heads} must divide {internal} (out_chans/{downsample_rate})")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, internal)
        self.k_proj = nn.Linear(dim, internal)
        self.v_proj = nn.Linear(dim, internal)
        self.out_proj = nn.Linear(internal, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(self._heads(self.q_proj(q)), self._heads(self.k_proj(k)),
                                             self._heads(self.v_proj(v)))
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


class TwoWayAttentionBlock3D(nn.Module):
    """Token self-attention, token->image cross attention, token MLP, image->token cross attention."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool,
                 attention_downsample_rate: int = 2):
        super().__init__()
        self.self_attn = TokenAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = TokenAttention(dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = TokenAttention(dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:  # first layer: the queries are the prompts themselves
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer3D(nn.Module):
    """SAM's two-way transformer; returns (tokens (B, T, C), image tokens (B, N, C))."""

    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int, attention_downsample_rate: int = 2):
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock3D(dim, num_heads, mlp_dim, i == 0, attention_downsample_rate)
            for i in range(depth))
        self.final_attn_token_to_image = TokenAttention(dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image_embedding, image_pe, point_embedding):
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        attn = self.final_attn_token_to_image(queries + point_embedding, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class MLP(nn.Module):
    """num_layers linear layers with ReLU between (SAM's hypernetwork MLP)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MaskDecoder3D(nn.Module):
    """Two-way transformer + x4 upscaling + per-class hypernetwork MLPs; one mask token per class."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_dim: int):
        super().__init__()
        if dim % 8:
            raise ValueError(f"out_chans must be a multiple of 8 for the x4 upscaling, got {dim}")
        self.transformer = TwoWayTransformer3D(depth, dim, num_heads, mlp_dim)
        self.mask_tokens = nn.ModuleDict({head: nn.Embedding(n, dim) for head, n in HEADS.items()})
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(dim, dim // 4, kernel_size=2, stride=2), LayerNorm3d(dim // 4), nn.GELU(),
            nn.ConvTranspose3d(dim // 4, dim // 8, kernel_size=2, stride=2), nn.GELU())
        self.output_hypernetworks_mlps = nn.ModuleDict(
            {head: nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(n)) for head, n in HEADS.items()})

    def forward(self, head: str, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Class logits (B, n_classes, 4X', 4Y', 4Z') of ``head`` on the (B, C, X', Y', Z') embedding."""
        b, c, *size = image_embeddings.shape
        n_cls = HEADS[head]
        tokens = torch.cat([self.mask_tokens[head].weight.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        hs, src = self.transformer(image_embeddings + dense, image_pe.expand(b, -1, -1, -1, -1), tokens)
        up = self.output_upscaling(src.transpose(1, 2).reshape(b, c, *size))
        hyper = torch.stack([mlp(hs[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps[head])], dim=1)
        return (hyper @ up.flatten(2)).view(b, n_cls, *up.shape[2:])


# ---------------------------------------------------------------------------- the model
class MedSAM3D(nn.Module):
    """SAM-Med3D-style automatic segmenter: forward(x) -> {"lesion": (B,2,...), "organs": (B,8,...)}."""

    def __init__(self, img_size: int = 128, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, out_chans: int = 384, use_rel_pos: bool = True,
                 window_size: int = 14, global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
                 decoder_depth: int = 2, decoder_heads: int = 8, decoder_mlp_dim: int = 2048,
                 n_prompt_tokens: int = 2):
        super().__init__()
        self.patch_size = patch_size
        self.image_encoder = ImageEncoderViT3D(img_size, patch_size, IN_CHANNELS, embed_dim, depth, num_heads,
                                               mlp_ratio, out_chans, use_rel_pos, window_size,
                                               tuple(global_attn_indexes))
        self.prompt_encoder = AutoPromptEncoder3D(out_chans, n_prompt_tokens)
        self.mask_decoder = MaskDecoder3D(out_chans, decoder_depth, decoder_heads, decoder_mlp_dim)

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != IN_CHANNELS:
            raise ValueError(f"Med-SAM input must be (B, 2, X, Y, Z) = [I_LC, denoised], got {tuple(x.shape)}")
        bad = [s for s in x.shape[2:] if s < self.patch_size or s % self.patch_size]
        if bad:
            raise ValueError(f"Med-SAM input sides {tuple(x.shape[2:])} must be positive multiples of the "
                             f"patch size {self.patch_size}")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(x)
        emb = self.image_encoder(normalise_suv(x))
        size = tuple(emb.shape[2:])
        pe = self.prompt_encoder.get_dense_pe(size).to(emb.dtype)
        out = {}
        for head in HEADS:
            sparse, dense = self.prompt_encoder(head, x.shape[0], size)
            low = self.mask_decoder(head, emb, pe, sparse, dense)  # 1/4 of the input resolution
            out[head] = F.interpolate(low, size=x.shape[2:], mode="trilinear", align_corners=False)
        return out


def build(**kwargs) -> MedSAM3D:
    return MedSAM3D(**kwargs)


def loss(model: MedSAM3D, batch: dict, weights: WeightsLike = None, form: str = "focal_tversky") -> dict:
    """AMDiff segmentation loss (Eq. 9 with the focal-Tversky Dice) of the model's logits.

    batch: "lc", "denoised" (B, 1, ...) SUV; "lesion", "organs" (B, X, Y, Z) int64.
    Returns "total" = (1/S) sum_s w_s (CE_s + FocalDice_s), its "ce" and "focal_dice" parts and
    detached per-class terms (s = 1..8).
    """
    return amdiff_segmentation_loss(model(segmenter_input(batch)), batch, weights, form=form)


# ---------------------------------------------------------------------------- checkpoints
def _few(keys, n: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_sam_med3d(model: MedSAM3D, path: str | Path) -> dict[str, int]:
    """Load a SAM-Med3D checkpoint's image encoder into ``model``; decoder parts stay as they are.

    The file is read with torch.load(weights_only=True); argparse.Namespace is allow-listed because
    SAM-Med3D's trainer saves its command-line args next to ``model_state_dict``. The state dict is
    ``model_state_dict`` if present, else the file's dict itself; its ``image_encoder.`` keys (a
    leading ``module.`` from DistributedDataParallel is accepted) must match the encoder exactly in
    names and shapes, except that a 1-channel patch embedding initialises the 2-channel one as
    [w/2, w/2]. Any mismatch raises InputError naming the file and a few offending keys.
    Returns {"tensors": loaded tensors, "parameters": loaded scalars, "patch_in_channels": 1 or 2}.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(path, f"refused by torch.load(weights_only=True), not a plain weights file: {first}") from e
    except Exception as e:  # missing file, truncated zip, garbage bytes: all one user-facing problem
        raise InputError(path, f"cannot read as a torch checkpoint: {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise InputError(path, "checkpoint must be a dict (a state dict or one with 'model_state_dict'), "
                               f"got {type(obj).__name__}")
    state = obj.get("model_state_dict", obj)
    if not isinstance(state, dict):
        raise InputError(path, f"'model_state_dict' must be a dict, got {type(state).__name__}")

    enc = {}
    for key, value in state.items():
        key = key.removeprefix("module.") if isinstance(key, str) else key
        if isinstance(key, str) and key.startswith(CHECKPOINT_PREFIX):
            enc[key[len(CHECKPOINT_PREFIX):]] = value
    if not enc:
        raise InputError(path, f"no '{CHECKPOINT_PREFIX}' keys; first keys: {_few(map(str, state))}")
    not_tensor = [k for k, v in enc.items() if not isinstance(v, torch.Tensor)]
    if not_tensor:
        raise InputError(path, f"non-tensor image-encoder entries: {_few(not_tensor)}")

    own = model.image_encoder.state_dict()
    patch_key = "patch_embed.proj.weight"
    patch_in = IN_CHANNELS
    if patch_key in enc and patch_key in own:
        w = enc[patch_key]
        if w.ndim == 5 and w.shape[1] == 1 and w.shape[0] == own[patch_key].shape[0] \
                and w.shape[2:] == own[patch_key].shape[2:]:
            # both channels see the pretrained kernel at half weight: identical inputs -> pretrained response
            enc[patch_key] = w.repeat(1, IN_CHANNELS, 1, 1, 1) / IN_CHANNELS
            patch_in = 1
    missing = own.keys() - enc.keys()
    unexpected = enc.keys() - own.keys()
    shapes = [f"{CHECKPOINT_PREFIX}{k} {tuple(enc[k].shape)} vs {tuple(own[k].shape)}"
              for k in own.keys() & enc.keys() if enc[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_few(CHECKPOINT_PREFIX + k for k in missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_few(CHECKPOINT_PREFIX + k for k in unexpected)}")
    if shapes:
        problems.append(f"shape mismatch (file vs model) {len(shapes)}: {_few(shapes, 3)}")
    if problems:
        raise InputError(path, "image encoder does not match the model: " + "; ".join(problems))
    model.image_encoder.load_state_dict(enc, strict=True)
    return {"tensors": len(enc), "parameters": sum(v.numel() for v in enc.values()), "patch_in_channels": patch_in}
