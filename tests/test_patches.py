"""Training data: cases from a manifest, lesion-balanced patch sampling, inference grid."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from amdiff.data import (
    Case,
    LazyVolume,
    PatchDataset,
    PatchSampler,
    collate,
    cut_patch,
    grid_patches,
    load_cases,
    plan_summary,
)
from amdiff.data.patches import PatchSpec, SubjectIndex, _BodyIndex
from amdiff.errors import InputError
from amdiff.io.nifti import centered_affine, write_volume

SHAPE = (40, 40, 40)
AFFINE = centered_affine(SHAPE, (4.0, 4.0, 4.0))
BIG_CENTRE, BIG_RADIUS = np.array([11, 11, 11]), 5   # ~515 voxels
SMALL = (slice(30, 32), slice(30, 32), slice(30, 32))  # 8 voxels


def synthetic_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """A body box (SUV ~1) in air (SUV 0) with one big and one tiny lesion and two organs."""
    rng = np.random.default_rng(seed)
    hc = np.zeros(SHAPE, np.float32)
    hc[3:37, 3:37, 2:38] = rng.uniform(0.8, 1.2, (34, 34, 36))
    organs = np.zeros(SHAPE, np.uint8)
    organs[20:30, 5:15, 5:35] = 1   # liver
    organs[5:15, 25:35, 5:35] = 2   # lung
    lesion = np.zeros(SHAPE, np.uint8)
    grid = np.indices(SHAPE).transpose(1, 2, 3, 0)
    lesion[np.sum((grid - BIG_CENTRE) ** 2, axis=-1) <= BIG_RADIUS ** 2] = 1
    lesion[SMALL] = 1
    hc[lesion > 0] = 6.0
    lc = hc + rng.normal(0, 0.2, SHAPE).astype(np.float32)
    return {"hc": hc, "lc": np.clip(lc, 0, None), "lesion": lesion, "organs": organs}


def make_case(arrays=None, subject="s1", level="p005_r0") -> Case:
    a = arrays or synthetic_arrays()
    return Case(subject=subject, site="mct", split="train", level=level, percent=5.0,
                realization=0, hc=a["hc"], lc=a["lc"], lesion=a["lesion"], organs=a["organs"],
                affine=AFFINE)


# ---------------------------------------------------------------- sampling

def test_lesion_fraction_and_small_lesion_not_starved():
    a = synthetic_arrays()
    big_voxels, small_voxels = int(a["lesion"].sum()) - 8, 8
    assert big_voxels > 400
    for fraction in (0.5, 0.3):
        sampler = PatchSampler([make_case(a)], patch_size=16, lesion_fraction=fraction, seed=1)
        specs = sampler.plan(400, epoch_index=0)
        patches = [sampler.patch(s) for s in specs]
        has = np.array([bool(p["has_lesion"]) for p in patches])
        assert plan_summary(specs) == {"patches": 400, "lesion_target": round(400 * fraction), "fallback": 0}
        assert abs(has.mean() - fraction) < 0.02
        # lesion-targeted centres lie on lesion voxels; each lesion is picked ~half the time
        centres = np.array([s.centre for s in specs if s.lesion_target])
        assert np.all(a["lesion"][tuple(centres.T)] == 1)
        in_small = np.all((centres >= 30) & (centres < 32), axis=1)
        # voxel-uniform sampling would give 8 / (8 + ~515) ~ 1.5 %
        assert 0.38 < in_small.mean() < 0.62, in_small.mean()
        assert small_voxels / (small_voxels + big_voxels) < 0.02


def test_lesion_absent_patches_hold_no_lesion_and_lie_in_body():
    a = synthetic_arrays()
    sampler = PatchSampler([make_case(a)], patch_size=16, lesion_fraction=0.5, seed=3)
    specs = sampler.plan(200, epoch_index=2)
    absent = [s for s in specs if not s.lesion_target]
    assert len(absent) == 100 and not any(s.fallback for s in absent)
    body = (a["hc"] > 0.1) | (a["organs"] > 0)
    for s in absent:
        p = sampler.patch(s)
        assert int(p["lesion"].sum()) == 0 and not bool(p["has_lesion"])
        assert body[s.centre]
        # the patch cut is the volume box around the centre
        lo = np.array(s.centre) - 8
        if np.all(lo >= 0) and np.all(lo + 16 <= 40):
            box = tuple(slice(int(l), int(l) + 16) for l in lo)
            assert torch.equal(p["hc"][0], torch.from_numpy(a["hc"][box]))
            assert torch.equal(p["organs"], torch.from_numpy(a["organs"][box].astype(np.int64)))


def test_fallback_when_every_body_patch_touches_a_lesion():
    shape = (20, 20, 20)
    hc = np.zeros(shape, np.float32)
    hc[8:12, 8:12, 8:12] = 1.0          # tiny body...
    lesion = np.zeros(shape, np.uint8)
    lesion[10, 10, 10] = 1              # ...with a lesion inside every 16^3 patch around it
    organs = np.zeros(shape, np.uint8)
    case = make_case({"hc": hc, "lc": hc, "lesion": lesion, "organs": organs})
    sampler = PatchSampler([case], patch_size=16, lesion_fraction=0.25, seed=0, max_tries=5)
    specs = sampler.plan(40, 0)
    assert plan_summary(specs) == {"patches": 40, "lesion_target": 10, "fallback": 30}
    assert all(hc[s.centre] > 0 for s in specs)  # fallbacks are still body patches


def test_lesion_free_cohort_warns_and_samples_absent_only():
    a = synthetic_arrays()
    a["lesion"][:] = 0
    with pytest.warns(UserWarning, match="no case has lesion"):
        sampler = PatchSampler([make_case(a)], patch_size=8, lesion_fraction=0.5, seed=0)
    assert plan_summary(sampler.plan(20, 0))["lesion_target"] == 0


def test_body_index_draws_exactly_the_mask_uniformly():
    mask = np.zeros((20, 20, 20), bool)   # 8000 voxels: spans two 4096-voxel blocks
    picks = [(0, 0, 3), (10, 5, 1), (19, 19, 19)]
    for p in picks:
        mask[p] = True
    idx = SubjectIndex(np.zeros(mask.shape, np.uint8), mask.astype(np.float32), np.zeros(mask.shape, np.uint8))
    assert idx.body.count == 3
    rng = np.random.default_rng(0)
    draws = [tuple(idx.body_voxel(rng)) for _ in range(3000)]
    counts = {p: draws.count(p) for p in picks}
    assert sum(counts.values()) == 3000
    assert all(abs(c - 1000) < 120 for c in counts.values()), counts
    flat = _BodyIndex(mask)
    assert [flat.flat_index(k) for k in range(3)] == list(np.flatnonzero(mask))


def test_padding_at_borders_keeps_shape_and_values():
    vol = (np.arange(np.prod(SHAPE)).reshape(SHAPE) + 1).astype(np.float32)
    out = cut_patch(vol, (-3, 35, 10), 8)          # 3 rows before x=0, 3 columns past y=39
    assert out.shape == (8, 8, 8)
    np.testing.assert_array_equal(out[3:, :5, :], vol[0:5, 35:40, 10:18])
    assert np.all(out[:3] == 0) and np.all(out[:, 5:] == 0)

    a = synthetic_arrays()
    a["hc"] = vol
    sampler = PatchSampler([make_case(a)], patch_size=16, seed=0)
    p = sampler.patch(PatchSpec(case=0, centre=(0, 39, 20), lesion_target=False))
    assert p["hc"].shape == (1, 16, 16, 16) and p["lesion"].shape == (16, 16, 16)
    assert p["hc"].dtype == torch.float32 and p["organs"].dtype == torch.int64
    # start = centre - 8 = (-8, 31, 12): x rows 0..7 are padding, y columns 9..15 are padding
    np.testing.assert_array_equal(p["hc"][0, 8:, :9].numpy(), vol[0:8, 31:40, 12:28])
    assert float(p["hc"][0, :8].abs().sum()) == 0 and float(p["hc"][0, :, 9:].abs().sum()) == 0


def test_plan_is_deterministic_per_seed_and_epoch():
    case = make_case()
    s1 = PatchSampler([case], 16, seed=7)
    s2 = PatchSampler([case], 16, seed=7)
    assert s1.plan(50, 3) == s2.plan(50, 3)
    assert s1.plan(50, 3) != s1.plan(50, 4)
    assert s1.plan(50, 3) != PatchSampler([case], 16, seed=8).plan(50, 3)
    e1, e2 = s1.epoch(6, 3), s2.epoch(6, 3)
    for p, q in zip(e1, e2):
        assert all(torch.equal(p[k], q[k]) for k in p)


def test_dataset_and_collate_with_dataloader():
    cases = [make_case(subject="s1"), make_case(subject="s2")]
    sampler = PatchSampler(cases, 8, seed=0)
    ds = PatchDataset(sampler, n_patches=10, epoch_index=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["lc"].shape == (4, 1, 8, 8, 8) and batch["lesion"].shape == (4, 8, 8, 8)
    assert batch["centre"].shape == (4, 3) and batch["has_lesion"].dtype == torch.bool
    ref = sampler.epoch(10, 1)[:4]
    assert torch.equal(batch["hc"], torch.stack([r["hc"] for r in ref]))
    before = ds.specs
    ds.set_epoch(2)
    assert ds.specs != before and len(ds) == 10


def test_grid_patches_covers_volume_and_ends_flush():
    assert grid_patches((10, 10, 10), 4, 4)[:, 2].tolist()[:3] == [0, 4, 6]
    for shape, p, s in [((40, 23, 17), 8, 3), ((9, 32, 33), 16, 16), ((5, 70, 12), 8, 8)]:
        starts = grid_patches(shape, p, s)
        cover = np.zeros(shape, int)
        for st in starts:
            cover[tuple(slice(int(a), int(a) + p) for a in st)] += 1
        assert cover.min() >= 1
        for ax, n in enumerate(shape):
            assert starts[:, ax].min() == 0
            assert starts[:, ax].max() == max(n - p, 0)   # flush with the border (or one padded window)
    with pytest.raises(ValueError, match="uncovered"):
        grid_patches((20, 20, 20), 8, 9)


# ---------------------------------------------------------------- cases from a manifest

def write_subject(root, name, arrays, levels, ext=".nii.gz", affine=AFFINE) -> dict:
    d = root / name
    d.mkdir(parents=True)
    write_volume(d / f"hc{ext}", arrays["hc"], affine)
    write_volume(d / f"ct{ext}", np.zeros(arrays["hc"].shape), affine)
    write_volume(d / f"lesion{ext}", arrays["lesion"], affine, np.uint8)
    write_volume(d / f"organs{ext}", arrays["organs"], affine, np.uint8)
    lc = []
    for i, lv in enumerate(levels):
        write_volume(d / f"lc_{lv}{ext}", arrays["lc"] * (1 + 0.1 * i), affine)
        lc.append(f"{lv}={name}/lc_{lv}{ext}")
    return {"hc_pet": f"{name}/hc{ext}", "ct": f"{name}/ct{ext}", "lesion": f"{name}/lesion{ext}",
            "organs": f"{name}/organs{ext}", "lc_pet": ";".join(lc)}


def write_manifest_tsv(path, rows):
    cols = ["subject", "site", "split", "hc_pet", "ct", "lesion", "organs", "lc_pet"]
    path.write_text("\n".join(["\t".join(cols)] + ["\t".join(r.get(c, "") for c in cols) for r in rows]) + "\n")
    return path


@pytest.fixture
def cohort(tmp_path):
    a, b = synthetic_arrays(0), synthetic_arrays(1)
    rows = [{"subject": "s1", "site": "mct", "split": "train",
             **write_subject(tmp_path, "s1", a, ["p005", "p010_r0", "p0125_r1"])},
            {"subject": "s2", "site": "uexplorer", "split": "train",
             **write_subject(tmp_path, "s2", b, ["p005_r0", "p010_r0", "p0125_r1"], ext=".nii")},
            {"subject": "s3", "site": "mct", "split": "val", **write_subject(tmp_path, "s3", a, ["p005"])}]
    return write_manifest_tsv(tmp_path / "manifest.tsv", rows), {"s1": a, "s2": b}


def test_load_cases_one_per_level(cohort):
    manifest, arrays = cohort
    cases = load_cases(manifest, "train")
    assert [(c.subject, c.level, c.percent, c.realization) for c in cases] == [
        ("s1", "p005_r0", 5.0, 0), ("s1", "p010_r0", 10.0, 0), ("s1", "p0125_r1", 12.5, 1),
        ("s2", "p005_r0", 5.0, 0), ("s2", "p010_r0", 10.0, 0), ("s2", "p0125_r1", 12.5, 1)]
    s1 = cases[:3]
    assert s1[0].hc is s1[1].hc is s1[2].hc and s1[0].lesion is s1[2].lesion   # read once per subject
    np.testing.assert_array_equal(s1[0].hc, arrays["s1"]["hc"])
    np.testing.assert_allclose(s1[1].lc, arrays["s1"]["lc"] * 1.1, rtol=1e-6)
    assert s1[0].lesion.dtype == np.uint8 and np.allclose(s1[0].affine, AFFINE)
    assert [c.level for c in load_cases(manifest, "train", levels=["p010"])] == ["p010_r0", "p010_r0"]
    assert [c.level for c in load_cases(manifest, "train", levels=[12.5, "p005_r0"], sites=["mct"])] == \
        ["p005_r0", "p0125_r1"]
    assert [c.subject for c in load_cases(manifest, "val")] == ["s3"]
    with pytest.raises(InputError, match="no low-count images"):
        load_cases(manifest, "test")


def test_load_cases_rejects_bad_inputs(tmp_path):
    a = synthetic_arrays()
    row = {"subject": "s1", "site": "mct", "split": "train", **write_subject(tmp_path, "s1", a, ["p005"])}
    # an lc image on another grid
    write_volume(tmp_path / "s1" / "lc_p005.nii.gz", a["lc"], centered_affine(SHAPE, (2.0, 2.0, 2.0)))
    with pytest.raises(InputError, match="lc_p005.nii.gz: affine differs"):
        load_cases(write_manifest_tsv(tmp_path / "m1.tsv", [row]), "train")
    # a non-binary lesion mask
    write_volume(tmp_path / "s1" / "lc_p005.nii.gz", a["lc"], AFFINE)
    write_volume(tmp_path / "s1" / "lesion.nii.gz", a["lesion"] * 2, AFFINE, np.uint8)
    with pytest.raises(InputError, match="lesion.nii.gz: lesion values must lie in 0..1"):
        load_cases(write_manifest_tsv(tmp_path / "m2.tsv", [row]), "train")
    # no organ map
    with pytest.raises(InputError, match="no organs map"):
        load_cases(write_manifest_tsv(tmp_path / "m3.tsv", [row | {"organs": ""}]), "train")


def test_lazy_and_eager_give_identical_patches(cohort):
    manifest, _ = cohort
    eager = load_cases(manifest, "train")
    lazy = load_cases(manifest, "train", lazy=True)
    assert isinstance(lazy[0].hc, LazyVolume) and isinstance(lazy[3].lc, LazyVolume)  # .nii.gz and .nii
    assert lazy[0].hc is lazy[2].hc
    se = PatchSampler(eager, 16, seed=5)
    sl = PatchSampler(pickle.loads(pickle.dumps(lazy)), 16, seed=5)   # as a DataLoader worker gets them
    assert se.plan(24, 1) == sl.plan(24, 1)
    for p, q in zip(se.epoch(24, 1), sl.epoch(24, 1)):
        assert all(torch.equal(p[k], q[k]) for k in p)


def test_lazy_checks_values_on_read(tmp_path):
    a = synthetic_arrays()
    row = {"subject": "s1", "site": "mct", "split": "train", **write_subject(tmp_path, "s1", a, ["p005"])}
    bad = a["lc"].copy()
    bad[5, 5, 5] = np.nan
    write_volume(tmp_path / "s1" / "lc_p005.nii.gz", bad, AFFINE)
    manifest = write_manifest_tsv(tmp_path / "m.tsv", [row])
    with pytest.raises(InputError, match="NaN"):
        load_cases(manifest, "train")
    case = load_cases(manifest, "train", lazy=True)[0]   # header checks only
    assert case.lc[20:24, 20:24, 20:24].shape == (4, 4, 4)
    with pytest.raises(InputError, match="lc_p005.nii.gz: 1 voxels are NaN"):
        case.lc[0:8, 0:8, 0:8]
