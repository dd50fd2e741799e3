"""AMDiff losses (Eqs. 3, 5, 7, 9-11) against values computed by hand on tiny tensors.

Common 4-voxel case (shape 1x1x2x2x1, voxels v0..v3 in row-major order):
    lesion = [1, 0, 0, 1], organs = [1 (liver), 0, 3 (bone), 0]
    -> M0 (background) = {v1}, M1 (lesion) = {v0, v3}, M2 (liver) = {v0}, M4 (bone) = {v2};
       v0 is a lesion inside the liver, so it is in both M1 and M2; M3, M5..M8 are empty.
"""

import math

import pytest
import torch

from amdiff.errors import InputError
from amdiff.losses import (AMDiffLoss, DiffusionL1Loss, LesionOrganRegularizer, RevisionLoss, SegmentationLoss,
                           ablation_weights, diffusion_l1, focal_dice_terms, lambda_warm, lesion_organ_regularizer,
                           per_class_l1, revision_loss, segmentation_loss, segmentation_terms, semantic_masks,
                           total_loss)

G = 4.0 / 3.0
EPS = 1e-5


def vol(values, shape=(1, 1, 2, 2, 1), dtype=torch.float32):
    return torch.tensor(values, dtype=dtype).reshape(shape)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def labels():
    return vol([1, 0, 0, 1], dtype=torch.uint8), vol([1, 0, 3, 0], dtype=torch.uint8)


# ---------------------------------------------------------------- Eq. 3

def test_diffusion_l1_is_mean_absolute_error():
    # |1-0| + |-1-0| + |2-0| + |0-0| = 4 over 4 elements -> 1.0
    assert diffusion_l1(vol([1.0, -1.0, 2.0, 0.0]), vol([0.0] * 4)).item() == pytest.approx(1.0)
    assert DiffusionL1Loss()(vol([0.5] * 4), vol([0.0] * 4)).item() == pytest.approx(0.5)
    with pytest.raises(InputError, match="differ in shape"):
        diffusion_l1(torch.zeros(1, 1, 2, 2, 1), torch.zeros(1, 1, 2, 2, 2))


# ---------------------------------------------------------------- masks

def test_semantic_masks_overlap_lesion_in_organ(labels):
    m = semantic_masks(*labels)
    assert m.shape == (1, 9, 2, 2, 1) and m.dtype == torch.float32
    flat = m.reshape(9, 4)
    expected = torch.zeros(9, 4)
    expected[0, 1] = 1           # background: neither lesion nor organ
    expected[1, [0, 3]] = 1      # lesion
    expected[2, 0] = 1           # liver (organ label 1 -> s = 2), overlaps the lesion at v0
    expected[4, 2] = 1           # bone (organ label 3 -> s = 4)
    assert torch.equal(flat, expected)


@pytest.mark.parametrize("lesion, organs, match", [
    ([2, 0, 0, 0], [0, 0, 0, 0], "binary"),
    ([0, 0, 0, 0], [0, 8, 0, 0], "0..7"),
    ([0, 0, 0, 0], [0, -1, 0, 0], "0..7"),
    ([0, 0, 0, 0], [0.5, 0, 0, 0], "integers"),
])
def test_semantic_masks_rejects_bad_labels(lesion, organs, match):
    with pytest.raises(InputError, match=match):
        semantic_masks(vol(lesion), vol(organs))


def test_semantic_masks_rejects_shape_mismatch():
    with pytest.raises(InputError, match="differ in shape"):
        semantic_masks(torch.zeros(1, 1, 2, 2, 1), torch.zeros(1, 1, 2, 2, 2))
    with pytest.raises(InputError, match=r"\(B, 1"):
        semantic_masks(torch.zeros(1, 2, 2, 2, 1), torch.zeros(1, 2, 2, 2, 1))


# ---------------------------------------------------------------- Eqs. 5 and 7

def test_regularizers_hand_values(labels):
    m = semantic_masks(*labels)
    i_hc = vol([0.0] * 4)
    p = vol([1.0, 2.0, 3.0, 4.0])           # |P - I| = [1, 2, 3, 4]
    # per-class MAE: s0 {v1} = 2; s1 {v0, v3} = (1 + 4)/2 = 2.5; s2 {v0} = 1; s4 {v2} = 3; rest empty = 0
    assert per_class_l1(p, i_hc, m).tolist() == pytest.approx([2.0, 2.5, 1.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0])
    assert lesion_organ_regularizer(p, i_hc, m).item() == pytest.approx(2.5 + 1.0 + 3.0)         # 6.5, s = 1..8
    assert revision_loss(p, i_hc, m).item() == pytest.approx(2.0 + 2.5 + 1.0 + 3.0)             # 8.5, s = 0..8
    w = [0.5, 2.0, 1.0, 1.0, 3.0, 1.0, 1.0, 1.0, 1.0]
    assert lesion_organ_regularizer(p, i_hc, m, w).item() == pytest.approx(2 * 2.5 + 1.0 + 3 * 3.0)  # 15
    assert revision_loss(p, i_hc, m, w).item() == pytest.approx(0.5 * 2.0 + 15.0)                  # 16
    # ablations zero w_1 (lesion) or w_2..w_8 (organs)
    no_lesion = ablation_weights(None, drop_lesion=True)
    no_organs = ablation_weights(None, drop_organs=True)
    assert no_lesion.tolist() == [1, 0, 1, 1, 1, 1, 1, 1, 1]
    assert no_organs.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert lesion_organ_regularizer(p, i_hc, m, no_lesion).item() == pytest.approx(1.0 + 3.0)
    assert lesion_organ_regularizer(p, i_hc, m, no_organs).item() == pytest.approx(2.5)
    both = ablation_weights(w, drop_lesion=True, drop_organs=True)
    assert lesion_organ_regularizer(p, i_hc, m, both).item() == 0.0
    # the module form holds its weights as a buffer that follows .to()
    mod = LesionOrganRegularizer(w).to(torch.float64)
    assert mod(p.double(), i_hc.double(), m.double()).item() == pytest.approx(15.0)
    assert RevisionLoss(w)(p, i_hc, m).item() == pytest.approx(16.0)


def test_class_mean_is_pooled_over_the_batch():
    # item 0: 1 lesion voxel with error 1; item 1: 3 lesion voxels with error 3.
    # pooled MAE = (1 + 3*3) / 4 = 2.5 (a mean of item means would give 2.0)
    lesion = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.uint8).reshape(2, 1, 2, 2, 1)
    organs = torch.zeros_like(lesion)
    p = torch.tensor([[1.0, 0, 0, 0], [3.0, 3.0, 3.0, 0]]).reshape(2, 1, 2, 2, 1)
    m = semantic_masks(lesion, organs)
    assert lesion_organ_regularizer(p, torch.zeros_like(p), m).item() == pytest.approx(2.5)


def test_regularizer_gradients_by_hand(labels):
    m = semantic_masks(*labels)
    p = vol([1.0, 2.0, 3.0, 4.0]).requires_grad_()
    lesion_organ_regularizer(p, torch.zeros_like(p), m).backward()
    # d/dP_v of sum_s |M_s(P-I)|/|M_s| with P > I: v0 in lesion (1/2) and liver (1/1) -> 1.5;
    # v1 background only, not in L_lor -> 0; v2 bone -> 1; v3 lesion -> 0.5
    assert p.grad.flatten().tolist() == pytest.approx([1.5, 0.0, 1.0, 0.5])
    p.grad = None
    revision_loss(p, torch.zeros_like(p), m).backward()
    assert p.grad.flatten().tolist() == pytest.approx([1.5, 1.0, 1.0, 0.5])


def test_empty_masks_give_zero_not_nan():
    m = torch.zeros(1, 9, 2, 2, 1)
    p = vol([1.0, 2.0, 3.0, 4.0]).requires_grad_()
    loss = lesion_organ_regularizer(p, torch.zeros_like(p), m) + revision_loss(p, torch.zeros_like(p), m)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(p.grad).all() and (p.grad == 0).all()


def test_perfect_denoising_gives_zero_regularizers(labels):
    m = semantic_masks(*labels)
    img = torch.rand(1, 1, 2, 2, 1) * 20
    assert lesion_organ_regularizer(img, img.clone(), m).item() == 0.0
    assert revision_loss(img, img.clone(), m).item() == 0.0


@pytest.mark.parametrize("weights, match", [
    ([1.0] * 8, "need 9"),
    ([1.0] * 8 + [-1.0], ">= 0"),
    ([1.0] * 8 + [float("nan")], "finite"),
])
def test_bad_weights_rejected(labels, weights, match):
    m = semantic_masks(*labels)
    with pytest.raises(InputError, match=match):
        lesion_organ_regularizer(torch.zeros(1, 1, 2, 2, 1), torch.zeros(1, 1, 2, 2, 1), m, weights)


def test_regularizer_rejects_mismatched_grids(labels):
    m = semantic_masks(*labels)
    with pytest.raises(InputError, match="must be"):
        revision_loss(torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2), m)


# ---------------------------------------------------------------- Eq. 9

def test_focal_dice_hand_value_gamma_4_3():
    # P = [0.5, 0.5], M = [1, 0]; f = (1 - 0.5)^(4/3) = 2^(-4/3) = 0.39685
    # num = 2 * f * 0.5 * 1 = f = 0.39685; den = f*0.25 + f*0.25 + 1^2 = 1.19843
    # FocalDice = 1 - (0.39685 + eps) / (1.19843 + eps) = 0.66885
    probs = torch.tensor([0.5, 0.5]).reshape(1, 1, 2, 1, 1)
    mask = torch.tensor([1.0, 0.0]).reshape(1, 1, 2, 1, 1)
    f = 2.0 ** (-4.0 / 3.0)
    expected = 1 - (f + EPS) / (0.5 * f + 1 + EPS)
    assert expected == pytest.approx(0.668851, abs=1e-6)
    assert focal_dice_terms(probs, mask).item() == pytest.approx(expected, rel=1e-6)
    # gamma = 0 is the plain squared soft Dice: 1 - 2*0.5 / (0.25 + 0.25 + 1) = 1/3
    assert focal_dice_terms(probs, mask, gamma=0.0).item() == pytest.approx(1 - (1 + EPS) / (1.5 + EPS), rel=1e-6)


def test_focal_dice_empty_mask():
    mask = torch.zeros(1, 1, 2, 1, 1)
    # empty mask and P ~ 0: eps / eps -> ~0 loss
    assert focal_dice_terms(torch.full((1, 1, 2, 1, 1), 1e-9), mask).item() == pytest.approx(0.0, abs=1e-6)
    # empty mask and P = 0.5 (false positives): 1 - eps / (2 * 0.25 * 2^(-4/3) + eps) = 0.99995
    f = 2.0 ** (-4.0 / 3.0)
    fp = focal_dice_terms(torch.full((1, 1, 2, 1, 1), 0.5), mask).item()
    assert fp == pytest.approx(1 - EPS / (0.5 * f + EPS), rel=1e-6)


def test_focal_dice_averages_items_of_the_batch():
    # item 0: the 2-voxel case above (0.66885); item 1: empty mask, P ~ 0 (0) -> mean 0.33443
    probs = torch.tensor([[0.5, 0.5], [1e-9, 1e-9]]).reshape(2, 1, 2, 1, 1)
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).reshape(2, 1, 2, 1, 1)
    f = 2.0 ** (-4.0 / 3.0)
    expected = 0.5 * (1 - (f + EPS) / (0.5 * f + 1 + EPS))
    assert focal_dice_terms(probs, mask).item() == pytest.approx(expected, rel=1e-5)


def _seg_hand_case():
    # 2 voxels (1x1x2x1x1): lesion = [1, 0], organs = [1 (liver), 0]; all logits 0, so
    # P_1 = softmax([0, 0])[1] = 0.5 and P_s = 1/8 = 0.125 for s = 2..8 at every voxel.
    lesion = torch.tensor([1, 0], dtype=torch.uint8).reshape(1, 1, 2, 1, 1)
    organs = torch.tensor([1, 0], dtype=torch.uint8).reshape(1, 1, 2, 1, 1)
    return torch.zeros(1, 2, 2, 1, 1), torch.zeros(1, 8, 2, 1, 1), lesion, organs


def test_segmentation_loss_hand_value():
    lesion_logits, organ_logits, lesion, organs = _seg_hand_case()
    f5 = 0.5 ** G      # 0.39685
    f8 = 0.875 ** G    # 0.83691
    ce1 = math.log(2) / 2                                   # -(1*log 0.5 + 0)/2 = 0.34657
    fd1 = 1 - (f5 + EPS) / (0.5 * f5 + 1 + EPS)             # 0.66885 (as in the focal test)
    ce2 = math.log(8) / 2                                   # liver: -(log 0.125)/2 = 1.03972
    fd2 = 1 - (2 * f8 * 0.125 + EPS) / (2 * f8 * 0.125 ** 2 + 1 + EPS)   # 1 - 0.20923/1.02615 = 0.79610
    fde = 1 - EPS / (2 * f8 * 0.125 ** 2 + EPS)             # empty organ class, P = 0.125: 0.99962
    expected = (ce1 + fd1 + ce2 + fd2 + 6 * fde) / 8        # (1/S) sum_{s=1..8}, S = 8 -> 1.10612
    assert expected == pytest.approx(1.106112, abs=1e-5)
    terms = segmentation_terms(lesion_logits, organ_logits, semantic_masks(lesion, organs))
    assert terms["ce"].tolist() == pytest.approx([ce1, ce2] + [0.0] * 6, abs=1e-6)
    assert terms["focal_dice"].tolist() == pytest.approx([fd1, fd2] + [fde] * 6, rel=1e-5)
    assert segmentation_loss(lesion_logits, organ_logits, lesion, organs).item() == pytest.approx(expected, rel=1e-5)
    # class weights: only the lesion, with w_1 = 2 -> 2 * (ce1 + fd1) / 8
    w = [5.0, 2.0] + [0.0] * 7   # w_0 is not part of Eq. 9
    assert segmentation_loss(lesion_logits, organ_logits, lesion, organs, w).item() == \
        pytest.approx(2 * (ce1 + fd1) / 8, rel=1e-5)
    assert SegmentationLoss(w)(lesion_logits, organ_logits, lesion, organs).item() == \
        pytest.approx(2 * (ce1 + fd1) / 8, rel=1e-5)


def _all_class_labels():
    # 1x1x4x2x1 grid: every organ 1..7 once plus one background voxel; lesions at v0 (in liver) and v7
    organs = torch.tensor([1, 2, 3, 4, 5, 6, 7, 0], dtype=torch.uint8).reshape(1, 1, 4, 2, 1)
    lesion = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1], dtype=torch.uint8).reshape(1, 1, 4, 2, 1)
    return lesion, organs


def test_perfect_segmentation():
    lesion, organs = _all_class_labels()
    big = 30.0
    lesion_logits = torch.cat([(1 - lesion.float()) * big, lesion.float() * big], dim=1)
    organ_logits = torch.nn.functional.one_hot(organs[:, 0].long(), 8).permute(0, 4, 1, 2, 3).float() * big
    terms = segmentation_terms(lesion_logits, organ_logits, semantic_masks(lesion, organs))
    assert terms["ce"].abs().max().item() < 1e-10
    # The printed focal factor (1-P)^(4/3) vanishes at P = 1, so a perfect non-empty class gives
    # FocalDice = 1 - eps/(|M| + eps) ~ 1, not 0 (see amdiff/losses/segmentation.py).
    assert terms["focal_dice"].tolist() == pytest.approx([1.0] * 8, abs=1e-4)
    # gamma = 0 (plain squared soft Dice): perfect prediction -> ~0
    plain = segmentation_terms(lesion_logits, organ_logits, semantic_masks(lesion, organs), gamma=0.0)
    assert plain["focal_dice"].abs().max().item() < 1e-5
    # an organ class absent from the patch and predicted absent contributes ~0
    organs_no_aorta = organs.clone()
    organs_no_aorta[organs_no_aorta == 7] = 0
    organ_logits2 = torch.nn.functional.one_hot(organs_no_aorta[:, 0].long(), 8).permute(0, 4, 1, 2, 3).float() * big
    t2 = segmentation_terms(lesion_logits, organ_logits2, semantic_masks(lesion, organs_no_aorta))
    assert t2["focal_dice"][7].item() == pytest.approx(0.0, abs=1e-5)


def test_one_voxel_focal_dice_is_smallest_near_0_41():
    # Property of the printed form: FD(P) = 1 - 2(1-P)^(4/3) P / ((1-P)^(4/3) P^2 + 1) for one
    # foreground voxel is smallest (~0.625) near P = 0.41, and back to 1 at P = 1.
    p = torch.linspace(0.0, 1.0, 1001).reshape(1001, 1, 1, 1, 1)
    fd = torch.stack([focal_dice_terms(p[i:i + 1], torch.ones(1, 1, 1, 1, 1)) for i in range(1001)]).flatten()
    i_min = int(fd.argmin())
    assert 0.39 < p.flatten()[i_min].item() < 0.43
    assert fd[i_min].item() == pytest.approx(0.6254, abs=1e-3)
    assert fd[-1].item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("gamma, low, high", [(G, 0.38, 0.45), (0.0, 0.95, 1.0)])
def test_fitted_lesion_probability(gamma, low, high):
    # Free lesion logits fitted to an 8-voxel lesion (8^3 patch) with the lesion term of L_seg only:
    # the printed focal Dice settles below 0.5 inside the lesion (~0.42); plain soft Dice reaches ~1.
    n = 8
    lesion = torch.zeros(1, 1, n, n, n, dtype=torch.uint8)
    lesion[..., 3:5, 3:5, 3:5] = 1
    organs = torch.zeros_like(lesion)
    logits = torch.zeros(1, 2, n, n, n, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)
    w = [0.0, 1.0] + [0.0] * 7
    for _ in range(600):
        opt.zero_grad()
        segmentation_loss(logits, torch.zeros(1, 8, n, n, n), lesion, organs, w, gamma=gamma).backward()
        opt.step()
    p1 = logits.detach().softmax(1)[:, 1]
    assert low < p1[lesion[:, 0].bool()].mean().item() < high
    assert p1[~lesion[:, 0].bool()].max().item() < 0.05


def test_segmentation_gradient_finite_including_saturation():
    lesion, organs = _all_class_labels()
    lesion_logits = torch.randn(1, 2, 4, 2, 1)
    organ_logits = torch.randn(1, 8, 4, 2, 1)
    lesion_logits[0, 1, 0, 0, 0] = 200.0   # softmax exactly 1.0 in float32 -> (1 - P)^(4/3) at 0
    organ_logits[0, 3, 1, 0, 0] = -200.0   # P exactly 0 -> log_softmax stays finite
    lesion_logits.requires_grad_()
    organ_logits.requires_grad_()
    loss = segmentation_loss(lesion_logits, organ_logits, lesion, organs)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(lesion_logits.grad).all() and torch.isfinite(organ_logits.grad).all()
    assert organ_logits.grad.abs().sum() > 0


def test_segmentation_rejects_bad_heads():
    lesion, organs = _all_class_labels()
    with pytest.raises(InputError, match="lesion logits"):
        segmentation_loss(torch.zeros(1, 3, 4, 2, 1), torch.zeros(1, 8, 4, 2, 1), lesion, organs)
    with pytest.raises(InputError, match="organ logits"):
        segmentation_loss(torch.zeros(1, 2, 4, 2, 1), torch.zeros(1, 7, 4, 2, 1), lesion, organs)


# ---------------------------------------------------------------- Eq. 11

@pytest.mark.parametrize("epoch, expected", [
    (0, 0.0),
    (99, 0.0),                              # e_T - 1: still warm-up
    (100, math.exp(-5 * 0.875 ** 2)),       # e_T: exp(-5 (1 - 100/800)^2) = exp(-3.828125) = 0.021750
    (400, math.exp(-1.25)),                 # e_max / 2: exp(-5 * 0.5^2) = 0.286505
    (800, 1.0),                             # e_max
])
def test_lambda_warm_paper_schedule(epoch, expected):
    assert lambda_warm(epoch, 100, 800) == pytest.approx(expected, rel=1e-12)


def test_lambda_warm_hand_numbers_and_validation():
    assert math.exp(-1.25) == pytest.approx(0.2865048, abs=1e-7)
    assert lambda_warm(100, 100, 800) == pytest.approx(0.0217504, abs=1e-7)
    for epoch, e_T, e_max, match in [(0, 0, 0, "e_max"), (0, 900, 800, "e_T"), (-1, 100, 800, "epoch"),
                                     (801, 100, 800, "epoch")]:
        with pytest.raises(InputError, match=match):
            lambda_warm(epoch, e_T, e_max)


# ---------------------------------------------------------------- Eq. 10

def _total_case(labels):
    lesion, organs = labels
    return dict(
        eps_pred=vol([1.0, -1.0, 2.0, 0.0]), eps=vol([0.0] * 4),            # L_diff = 1
        p_hc=vol([1.0, 2.0, 3.0, 4.0]), i_hc=vol([0.0] * 4),                # L_lor = 6.5 (hand case)
        p_hcr=vol([2.0, 4.0, 6.0, 8.0]), i_hc_suv=vol([0.0] * 4),           # L_rev = 4 + 5 + 2 + 6 = 17
        lesion_logits=torch.zeros(1, 2, 2, 2, 1), organ_logits=torch.zeros(1, 8, 2, 2, 1),
        lesion=lesion, organs=organs)


def _seg_of_total_case():
    # 4 voxels, P_1 = 0.5 and P_{2..8} = 0.125 everywhere; M1 = {v0, v3}, M2 = {v0}, M4 = {v2}
    f5, f8 = 0.5 ** G, 0.875 ** G
    ce1, fd1 = math.log(2) / 2, 1 - (2 * f5 + EPS) / (f5 + 2 + EPS)          # num 2*f5*0.5*2, den 4*f5/4 + 2
    ce_org, fd_org = math.log(8) / 4, 1 - (f8 / 4 + EPS) / (f8 / 16 + 1 + EPS)  # num 2*f8*0.125, den 4*f8/64 + 1
    fde = 1 - EPS / (f8 / 16 + EPS)
    return (ce1 + fd1 + 2 * (ce_org + fd_org) + 5 * fde) / 8


def test_total_loss_hand_value(labels):
    out = total_loss(**_total_case(labels), epoch=400, e_T=100, e_max=800)
    seg = _seg_of_total_case()
    assert out["diff"].item() == pytest.approx(1.0)
    assert out["lor"].item() == pytest.approx(6.5)
    assert out["rev"].item() == pytest.approx(17.0)
    assert out["seg"].item() == pytest.approx(seg, rel=1e-5)
    assert out["lambda_warm"].item() == pytest.approx(math.exp(-1.25))
    assert out["total"].item() == pytest.approx(1.0 + math.exp(-1.25) * (6.5 + 17.0 + seg), rel=1e-5)
    assert out["lor_per_class"].tolist() == pytest.approx([2.0, 2.5, 1.0, 0, 3.0, 0, 0, 0, 0])
    assert out["rev_per_class"].tolist() == pytest.approx([4.0, 5.0, 2.0, 0, 6.0, 0, 0, 0, 0])
    assert out["seg_ce_per_class"].shape == (8,) and out["seg_focal_dice_per_class"].shape == (8,)
    # ablations touch L_lor only
    no_les = total_loss(**_total_case(labels), epoch=400, e_T=100, e_max=800, drop_lesion=True)
    no_org = total_loss(**_total_case(labels), epoch=400, e_T=100, e_max=800, drop_organs=True)
    assert no_les["lor"].item() == pytest.approx(4.0) and no_org["lor"].item() == pytest.approx(2.5)
    assert no_les["rev"].item() == pytest.approx(17.0) and no_org["seg"].item() == pytest.approx(seg, rel=1e-5)
    # the module form gives the same numbers
    mod = AMDiffLoss(e_T=100, e_max=800, drop_organs=True)
    case = _total_case(labels)
    assert mod(case.pop("eps_pred"), case.pop("eps"), epoch=400, **case)["total"].item() == \
        pytest.approx(no_org["total"].item(), rel=1e-6)


def test_total_loss_during_warm_up(labels):
    case = _total_case(labels)
    case["lesion_logits"].requires_grad_()
    case["eps_pred"].requires_grad_()
    out = total_loss(**case, epoch=99, e_T=100, e_max=800)
    assert out["total"].item() == pytest.approx(1.0) and out["lambda_warm"].item() == 0.0
    out["total"].backward()
    assert case["lesion_logits"].grad is None   # the segmenter receives no gradient before e_T
    # before e_T the auxiliary inputs may be omitted (the trainer need not run the segmenter)
    only = total_loss(vol([1.0, -1.0, 2.0, 0.0]), vol([0.0] * 4), epoch=0, e_T=100, e_max=800)
    assert only["total"].item() == pytest.approx(1.0) and only["seg"].item() == 0.0
    with pytest.raises(InputError, match="required"):
        total_loss(vol([1.0, -1.0, 2.0, 0.0]), vol([0.0] * 4), epoch=100, e_T=100, e_max=800)


def test_focal_tversky_form_by_hand_and_perfect_prediction():
    from amdiff.losses.segmentation import focal_tversky_dice_terms

    probs = torch.tensor([0.5, 0.0]).view(1, 1, 2, 1, 1)
    masks = torch.tensor([1.0, 0.0]).view(1, 1, 2, 1, 1)
    # DSC = (2*0.5 + eps) / (0.25 + 1 + eps); FD = (1 - DSC)^(3/4)
    eps = 1e-5
    dsc = (1.0 + eps) / (1.25 + eps)
    expected = (1 - dsc) ** 0.75
    assert float(focal_tversky_dice_terms(probs, masks, 4 / 3, eps)) == pytest.approx(expected, rel=1e-6)
    # a perfect prediction gives 0 (the printed form gives ~1, see the module docstring)
    assert float(focal_tversky_dice_terms(masks, masks, 4 / 3, eps)) == pytest.approx(0.0, abs=1e-6)
    # an absent class predicted absent gives 0, predicted present gives ~1
    empty = torch.zeros_like(masks)
    assert float(focal_tversky_dice_terms(empty, empty)) == pytest.approx(0.0, abs=1e-6)
    assert float(focal_tversky_dice_terms(masks, empty)) == pytest.approx(1.0, abs=1e-3)


def test_focal_tversky_form_drives_small_lesions_above_one_half():
    from amdiff.losses.regularizers import semantic_masks
    from amdiff.losses.segmentation import segmentation_terms

    torch.manual_seed(0)
    lesion = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    lesion[..., 3:5, 3:5, 3:5] = 1
    organs = torch.zeros_like(lesion)
    lesion_logits = torch.zeros(1, 2, 8, 8, 8, requires_grad=True)
    organ_logits = torch.zeros(1, 8, 8, 8, 8, requires_grad=True)
    opt = torch.optim.Adam([lesion_logits, organ_logits], lr=0.05)
    masks = semantic_masks(lesion, organs)
    for _ in range(400):
        opt.zero_grad()
        terms = segmentation_terms(lesion_logits, organ_logits, masks, form="focal_tversky")
        (terms["ce"] + terms["focal_dice"]).sum().backward()
        opt.step()
    p = torch.softmax(lesion_logits.detach(), 1)[:, 1][lesion[:, 0] == 1]
    assert float(p.min()) > 0.5
    with pytest.raises(InputError, match="form"):
        segmentation_terms(lesion_logits, organ_logits, masks, form="dice")
