"""Med-SAM (SAM-Med3D-style automatic segmenter): shapes, geometry helpers, training step,
checkpoint loading and the paper-size parameter count."""

import argparse

import pytest
import torch
import torch.nn.functional as F

from amdiff.errors import InputError
from amdiff.models.baselines import medsam3d as ms
from amdiff.models.params import count_parameters

PREFIX = ms.CHECKPOINT_PREFIX


def demo_model(seed: int = 0, **over) -> ms.MedSAM3D:
    torch.manual_seed(seed)
    return ms.build(**{**ms.DEMO, **over})


def toy_batch(seed: int = 0, b: int = 2, n: int = 32) -> dict:
    g = torch.Generator().manual_seed(seed)
    organs = torch.zeros(b, n, n, n, dtype=torch.int64)
    organs[:, 4:16, 4:20, 6:26] = 1      # liver block
    organs[:, 18:28, 6:26, 4:28] = 2     # lung block
    organs[:, 10:12, 22:30, 10:20] = 7   # aorta slab
    lesion = torch.zeros(b, n, n, n, dtype=torch.int64)
    lesion[:, 8:12, 8:12, 12:16] = 1     # inside the liver
    suv = torch.tensor([0.3, 2.5, 0.6, 0.8, 1.5, 3.0, 2.0, 2.2])[organs]
    suv = torch.where(lesion == 1, torch.tensor(12.0), suv).unsqueeze(1)
    hc = suv * (1 + 0.05 * torch.randn(suv.shape, generator=g))
    lc = suv * (1 + 0.3 * torch.randn(suv.shape, generator=g))
    return {"lc": lc, "hc": hc, "denoised": hc, "lesion": lesion, "organs": organs}


# ---------------------------------------------------------------------------- shapes and geometry
def test_demo_output_shapes_and_quarter_resolution_masks():
    model = demo_model()
    x = torch.rand(2, 2, 32, 32, 32) * 5
    out = model(x)
    assert set(out) == {"lesion", "organs"}
    assert out["lesion"].shape == (2, 2, 32, 32, 32) and out["organs"].shape == (2, 8, 32, 32, 32)
    assert all(bool(torch.isfinite(v).all()) for v in out.values())
    # the decoder itself works at 1/4 of the input resolution: patch 8 -> 4^3 grid -> 16^3 masks
    emb = model.image_encoder(torch.asinh(x))
    assert emb.shape == (2, ms.DEMO["out_chans"], 4, 4, 4)
    sparse, dense = model.prompt_encoder("organs", 2, (4, 4, 4))
    low = model.mask_decoder("organs", emb, model.prompt_encoder.get_dense_pe((4, 4, 4)), sparse, dense)
    assert low.shape == (2, 8, 16, 16, 16)
    # another grid than img_size/patch: the positional embedding is interpolated
    out = model(torch.rand(1, 2, 16, 32, 24))
    assert out["lesion"].shape == (1, 2, 16, 32, 24) and out["organs"].shape == (1, 8, 16, 32, 24)


def test_heads_use_their_own_prompts():
    model = demo_model()
    x = torch.rand(1, 2, 32, 32, 32) * 5
    before = model(x)
    with torch.no_grad():
        model.prompt_encoder.sparse_prompts["lesion"].add_(1.0)
    after = model(x)
    assert not torch.allclose(before["lesion"], after["lesion"])
    assert torch.equal(before["organs"], after["organs"])


@pytest.mark.parametrize("shape", [(1, 2, 30, 32, 32), (1, 2, 32, 32, 4), (1, 1, 32, 32, 32), (2, 32, 32, 32)])
def test_bad_input_shapes_raise_value_error(shape):
    with pytest.raises(ValueError, match="Med-SAM input"):
        demo_model()(torch.zeros(shape))


def test_window_partition_round_trip_with_padding():
    x = torch.randn(2, 5, 4, 3, 6)
    win, padded = ms.window_partition(x, 3)
    assert padded == (6, 6, 3) and win.shape == (2 * 2 * 2 * 1, 3, 3, 3, 6)
    assert torch.equal(win[0, :3, :3, :3], x[0, :3, :3, :3])          # first window = first corner
    assert torch.equal(win[1, :, 0], x[0, :3, 3])                       # second window: h = 3..5
    assert torch.count_nonzero(win[1, :, 1:]) == 0                      # h = 4, 5 are padding
    assert torch.count_nonzero(win[2, 2]) == 0                          # d = 5 is padding
    assert torch.equal(ms.window_unpartition(win, 3, padded, (5, 4, 3)), x)


def test_relative_position_bias_matches_hand_computation():
    torch.manual_seed(3)
    attn = ms.Attention(dim=4, num_heads=1, use_rel_pos=True, input_size=3)
    with torch.no_grad():
        for t in (attn.rel_pos_d, attn.rel_pos_h, attn.rel_pos_w):
            t.normal_()
    q = torch.randn(1, 1, 3 * 2 * 1, 4)                                 # grid (3, 2, 1)
    bias = attn.rel_pos_bias(q, (3, 2, 1))[0, 0]
    # rel_pos_h (length 5, made for size 3) is resampled to length 3 for a side of 2
    rh = F.interpolate(attn.rel_pos_h.T[None], size=3, mode="linear")[0].T
    rw = F.interpolate(attn.rel_pos_w.T[None], size=1, mode="linear")[0].T
    coords = [(d, h) for d in range(3) for h in range(2)]
    for i, (di, hi) in enumerate(coords):
        for j, (dj, hj) in enumerate(coords):
            expect = q[0, 0, i] @ (attn.rel_pos_d[di - dj + 2] + rh[hi - hj + 1] + rw[0])
            assert torch.isclose(bias[i, j], expect, atol=1e-5)


# ---------------------------------------------------------------------------- loss and training
def test_one_optimisation_step_lowers_the_loss():
    model = demo_model(seed=1)
    batch = toy_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = ms.loss(model, batch)
    assert set(first) >= {"total", "ce", "focal_dice"} and first["ce_per_class"].shape == (8,)
    assert torch.isclose(first["total"], first["ce"] + first["focal_dice"])
    opt.zero_grad()
    first["total"].backward()
    opt.step()
    losses = [float(first["total"].detach())]
    for _ in range(3):
        opt.zero_grad()
        out = ms.loss(model, batch)
        out["total"].backward()
        opt.step()
        losses.append(float(out["total"].detach()))
    print("Med-SAM demo losses:", [round(v, 4) for v in losses])
    assert losses[1] < losses[0] and losses[-1] < losses[0]


def test_loss_rejects_incomplete_batch():
    batch = toy_batch()
    del batch["denoised"]
    with pytest.raises(InputError, match="denoised"):
        ms.loss(demo_model(), batch)


# ---------------------------------------------------------------------------- checkpoints
def sam_med3d_like_checkpoint(model: ms.MedSAM3D, one_channel: torch.Tensor | None = None) -> dict:
    """A dict shaped like SAM-Med3D's trainer output: args, epoch and a full model_state_dict."""
    enc = {PREFIX + k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    if one_channel is not None:
        enc[PREFIX + "patch_embed.proj.weight"] = one_channel
    enc["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 7)
    enc["mask_decoder.iou_token.weight"] = torch.zeros(1, 7)
    return {"epoch": 3, "model_state_dict": enc, "args": argparse.Namespace(lr=8e-4, img_size=128)}


def test_load_sam_med3d_one_channel_checkpoint(tmp_path):
    src = demo_model(seed=1)
    e, p = ms.DEMO["embed_dim"], ms.DEMO["patch_size"]
    w1 = torch.randn(e, 1, p, p, p)
    path = tmp_path / "sam_med3d_turbo.pth"
    torch.save(sam_med3d_like_checkpoint(src, w1), path)

    dst = demo_model(seed=2)
    decoder_before = {k: v.clone() for k, v in dst.mask_decoder.state_dict().items()}
    info = ms.load_sam_med3d(dst, path)
    own = dst.image_encoder.state_dict()
    assert info["patch_in_channels"] == 1 and info["tensors"] == len(own)
    for k, v in src.image_encoder.state_dict().items():
        if k != "patch_embed.proj.weight":
            assert torch.equal(own[k], v), k
    assert torch.equal(own["patch_embed.proj.weight"], torch.cat([w1, w1], 1) / 2)
    # two identical channels reproduce the 1-channel pretrained patch response
    x = torch.randn(1, 1, 16, 16, 16)
    expect = F.conv3d(x, w1, own["patch_embed.proj.bias"], stride=p).permute(0, 2, 3, 4, 1)
    assert torch.allclose(dst.image_encoder.patch_embed(torch.cat([x, x], 1)), expect, rtol=1e-5, atol=1e-4)
    assert all(torch.equal(v, decoder_before[k]) for k, v in dst.mask_decoder.state_dict().items())


def test_load_sam_med3d_plain_two_channel_state_dict(tmp_path):
    src = demo_model(seed=1)
    path = tmp_path / "own.pt"
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, path)   # DDP-style keys
    dst = demo_model(seed=2)
    assert ms.load_sam_med3d(dst, path)["patch_in_channels"] == 2
    x = torch.rand(1, 2, 32, 32, 32)
    assert torch.equal(dst.image_encoder(x), src.image_encoder(x))


class _NotAllowed:
    """A class torch.load(weights_only=True) must refuse to build."""


def _wrong_dims(path, model):
    torch.save(sam_med3d_like_checkpoint(demo_model(embed_dim=32)), path)


def _missing(path, model):
    ck = sam_med3d_like_checkpoint(model)
    del ck["model_state_dict"][PREFIX + "blocks.1.mlp.lin2.bias"]
    torch.save(ck, path)


def _unexpected(path, model):
    ck = sam_med3d_like_checkpoint(model)
    ck["model_state_dict"][PREFIX + "blocks.7.attn.qkv.weight"] = torch.zeros(3, 3)
    torch.save(ck, path)


def _non_dict(path, model):
    torch.save([torch.zeros(3)], path)


def _custom_class(path, model):
    ck = sam_med3d_like_checkpoint(model)
    ck["extra"] = _NotAllowed()
    torch.save(ck, path)


def _no_encoder(path, model):
    torch.save({"model_state_dict": {"mask_decoder.x": torch.zeros(2)}}, path)


def _not_torch(path, model):
    path.write_bytes(b"this is not a checkpoint")


@pytest.mark.parametrize("make, match", [
    (_wrong_dims, r"shape mismatch .*: image_encoder\.blocks\.0\.attn\.proj\.bias \(32,\) vs \(48,\)"),
    (_missing, r"missing 1: image_encoder\.blocks\.1\.mlp\.lin2\.bias"),
    (_unexpected, r"unexpected 1: image_encoder\.blocks\.7\.attn\.qkv\.weight"),
    (_non_dict, r"must be a dict.*list"),
    (_custom_class, r"weights_only"),
    (_no_encoder, r"no 'image_encoder\.' keys"),
    (_not_torch, r"cannot read"),
])
def test_load_sam_med3d_rejects_incompatible_files(tmp_path, make, match):
    model = demo_model()
    path = tmp_path / "bad_ckpt.pth"
    make(path, model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match=match) as err:
        ms.load_sam_med3d(model, path)
    assert "bad_ckpt.pth" in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())   # untouched


def test_load_sam_med3d_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.pth"):
        ms.load_sam_med3d(demo_model(), tmp_path / "nope.pth")


# ---------------------------------------------------------------------------- paper size
def vit_encoder_count(e, heads, depth, patch, grid, out, in_ch, window, n_global, mlp_ratio=4):
    """Closed-form parameter count of the SAM-Med3D-style 3D ViT image encoder."""
    block = 2 * 2 * e + (3 * e * e + 3 * e) + (e * e + e) + 2 * mlp_ratio * e * e + mlp_ratio * e + e
    rel = 3 * (e // heads) * ((depth - n_global) * (2 * window - 1) + n_global * (2 * grid - 1))
    patch_embed = e * in_ch * patch**3 + e
    neck = e * out + 2 * out + 27 * out * out + 2 * out
    return depth * block + rel + patch_embed + grid**3 * e + neck


def test_paper_size_parameter_count():
    with torch.device("meta"):  # count without allocating 0.4 GB
        model = ms.build(**ms.PAPER)
    total = count_parameters(model)
    enc = count_parameters(model.image_encoder)
    dec = count_parameters(model.mask_decoder)
    print(f"Med-SAM at paper size: {total:,} parameters (image encoder {enc:,}, mask decoder {dec:,}, "
          f"prompt encoder {count_parameters(model.prompt_encoder):,})")
    assert enc == vit_encoder_count(768, 12, 12, 16, 8, 384, 2, 14, 4)
    # ViT-B trunk ~85 M + 3D patch embedding (2 x 3.1 M) + neck 4.3 M + pos 0.4 M
    assert 95e6 < enc < 97e6
    # SAM-Med3D vit_b_ori is 100.5 M; we add a channel (+3.1 M) and 6 more hypernetwork MLPs (+1.9 M)
    # and drop the IoU head and mask-prompt encoder (-0.2 M)
    assert 104e6 < total < 107e6
