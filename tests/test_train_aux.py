"""How the AMDiff trainer forms P_HC, which Eq. 10 terms each variant trains with, how it
validates, and the background term of the segmentation cross-entropy."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from amdiff.losses.segmentation import segmentation_loss
from amdiff.contracts import VARIANTS
from amdiff.train.base import RunningMeans
from amdiff.train import trainer as trainer_module
from amdiff.train.trainer import Trainer, clamp_p_hc
from tests.test_train import CONFIG, manifest  # noqa: F401  (module-scoped fixture)


def make(manifest, tmp_path, variant="amdiff", **training):
    cfg = copy.deepcopy(CONFIG)
    cfg["training"].update({"epochs": 2, "warmup_epochs": 0, **training})
    torch.manual_seed(0)
    return Trainer(cfg, variant, "mct", manifest, tmp_path / variant)


def perturbed(trainer):
    """Untrained output convs are zero (eps = 0, P_HCR = I_LC whatever the sampler): perturb them."""
    torch.manual_seed(5)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer.model.eval()
    return trainer


def one_batch(trainer, t_values, epoch=1):
    """One training step with the diffusion steps forced to ``t_values``."""
    trainer.model.schedule.sample_t = lambda n, gen=None: torch.tensor(t_values[:n])
    batch = next(trainer_module.batches(trainer.train_sampler.epoch(len(t_values), 0), len(t_values)))
    return trainer.train_batch(batch, epoch, torch.Generator().manual_seed(1))


def test_straight_through_clamp_keeps_the_gradient_that_a_hard_clamp_drops():
    x = torch.tensor([-3.0, -0.5, 0.2, 4.0], requires_grad=True)
    for mode, grad in (("straight_through", [1.0, 1.0, 1.0, 1.0]), ("hard", [0.0, 1.0, 1.0, 0.0])):
        x.grad = None
        y = clamp_p_hc(x, mode)
        assert y.tolist() == pytest.approx([-1.0, -0.5, 0.2, 1.0])   # inference's range either way
        y.sum().backward()
        assert x.grad.tolist() == grad


def test_only_items_with_small_t_form_p_hc(manifest, tmp_path):
    tr = make(manifest, tmp_path, aux_max_t_fraction=0.5)   # T = 20: t < 10 qualifies
    seen = []
    tr.model.segmenter.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    mixed = one_batch(tr, [19, 3])
    assert seen == [1]   # only the t = 3 item reaches f_rev and f_seg
    assert all(np.isfinite(mixed[k]) and mixed[k] > 0 for k in ("lor", "rev", "seg"))
    seen.clear()
    noisy = one_batch(tr, [19, 12])
    assert seen == []
    assert all(np.isnan(noisy[k]) for k in ("lor", "rev", "seg"))
    assert noisy["total"] == pytest.approx(noisy["diff"])
    every_t = make(manifest, tmp_path / "all", aux_max_t_fraction=1.0)
    every_t.model.segmenter.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    one_batch(every_t, [19, 12])
    assert seen == [2]


def test_epoch_means_leave_out_batches_without_p_hc():
    means = RunningMeans()
    means.add({"diff": 1.0, "lor": float("nan")}, 2)
    means.add({"diff": 3.0, "lor": 0.5}, 2)
    assert means.result() == {"diff": 2.0, "lor": 0.5}
    empty = RunningMeans()
    empty.add({"lor": float("nan")}, 2)
    assert np.isnan(empty.result()["lor"])


@pytest.mark.parametrize("variant", ["amdiff", "amdiff_no_revision", "amdiff_no_lor", "amdiff_no_organ_reg"])
def test_each_variant_trains_with_exactly_its_terms(manifest, tmp_path, variant):
    tr = make(manifest, tmp_path, variant)
    terms = VARIANTS[variant].loss_terms()
    out = one_batch(tr, [2, 4])
    for term in ("lor", "rev", "seg"):
        if term in terms:
            assert out[term] > 0, term
        else:
            assert out[term] == 0, term
    assert out["total"] > out["diff"]


def test_no_revision_and_no_lor_drop_their_terms():
    assert VARIANTS["amdiff_no_revision"].loss_terms() == ("diff", "lor", "seg")
    assert VARIANTS["amdiff_no_lor"].loss_terms() == ("diff", "rev", "seg")
    assert VARIANTS["amdiff_no_lesion_reg"].loss_terms() == ("diff", "lor", "rev", "seg")
    assert VARIANTS["med_ddpm"].loss_terms() == ("diff",)


def test_validation_samples_each_patch_with_ddim_as_inference_does(manifest, tmp_path, monkeypatch):
    calls = []
    real = trainer_module.sample

    def counting(*args, **kwargs):
        calls.append((kwargs["method"], kwargs["steps"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "sample", counting)
    sampled = perturbed(make(manifest, tmp_path, val_sampler_steps=3))
    with torch.no_grad():
        a, b = sampled.validate(), sampled.validate()
    assert calls == [("ddim", 3)] * 2   # 2 validation patches in one batch of 2, twice
    assert a == b   # fixed noise: the same model gets the same score
    one_step = perturbed(make(manifest, tmp_path / "one", val_sampler_steps=0))
    calls.clear()
    with torch.no_grad():
        c = one_step.validate()
    assert calls == [] and c["val_nrmse"] != a["val_nrmse"]


def test_a_short_run_logs_finite_aux_means(manifest, tmp_path):
    tr = make(manifest, tmp_path, aux_max_t_fraction=0.5, val_sampler_steps=2)
    tr.fit(progress=False)
    log = pd.read_csv(tmp_path / "amdiff" / "log.csv")
    assert np.isfinite(log.train_diff).all() and np.isfinite(log.val_nrmse).all()


# ---- the cross-entropy's background term ------------------------------------------------------

def _lesion_free_patch(n_false_positive: int, side: int = 16):
    """Lesion-free patch whose lesion head says "lesion" (P ~ 0.998) on n voxels, "background"
    (P ~ 0.002) elsewhere; the organ head is right everywhere."""
    lesion = torch.zeros(1, 1, side, side, side)
    organs = torch.zeros(1, 1, side, side, side, dtype=torch.long)
    organs[:, :, :8] = 1
    logits = torch.zeros(1, 2, side, side, side)
    logits[:, 1] = -6.0
    flat = logits[:, 1].view(-1)
    flat[:n_false_positive] = 6.0
    organ_logits = -6.0 * torch.ones(1, 8, side, side, side)
    organ_logits[:, 0] = 6.0
    organ_logits[:, 0, :8] = -6.0
    organ_logits[:, 1, :8] = 6.0
    return logits.requires_grad_(), organ_logits, lesion, organs


@pytest.mark.parametrize("form", ["focal_tversky", "printed"])
def test_false_positive_lesion_voxels_cost_in_proportion_with_the_background_term(form):
    losses = {}
    for ce_form in ("with_background", "printed"):
        losses[ce_form] = []
        for n in (0, 8, 512):
            logits, organ_logits, lesion, organs = _lesion_free_patch(n)
            loss = segmentation_loss(logits, organ_logits, lesion, organs, form=form, ce_form=ce_form)
            loss.backward()
            losses[ce_form].append((loss.item(), logits.grad[0, 1].view(-1)[0].item()))
    full = [v for v, _ in losses["with_background"]]
    printed = [v for v, _ in losses["printed"]]
    # with the background term, 512 false-positive voxels cost much more than 8
    assert full[0] < full[1] < full[2]
    assert full[2] - full[1] > 20 * (full[1] - full[0]) / 2
    # as printed, 8 and 512 confident false positives cost the same (the empty class's Dice saturates)
    assert printed[2] == pytest.approx(printed[1], abs=1e-3)
    # and the first false-positive voxel's logit gets a gradient pushing it down only with the term
    grad_full, grad_printed = losses["with_background"][2][1], losses["printed"][2][1]
    assert grad_full > 1e-5 and grad_full > 100 * abs(grad_printed)
