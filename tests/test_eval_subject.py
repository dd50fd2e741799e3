"""`amdiff evaluate` and `amdiff collect-metrics`: files in, one checked metrics row per image out."""

import numpy as np
import pandas as pd
import pytest

from amdiff.cli import main
from amdiff.evaluate.columns import COLUMNS
from amdiff.io.nifti import centered_affine, write_volume

SHAPE = (12, 12, 10)
VOXEL_MM = (4.0, 4.0, 5.0)   # 0.08 mL per voxel


@pytest.fixture
def subject(tmp_path):
    """A reference with one 2x2x2 lesion of SUV 8 in a liver of SUV 2, and two predictions."""
    rng = np.random.default_rng(0)
    affine = centered_affine(SHAPE, VOXEL_MM)
    hc = (0.5 + 0.05 * rng.standard_normal(SHAPE)).astype(np.float32)
    organs = np.zeros(SHAPE, np.uint8)
    organs[2:8, 2:8, 2:8] = 1
    hc[organs == 1] = 2.0 + 0.1 * rng.standard_normal(int((organs == 1).sum()))
    lesion = np.zeros(SHAPE, np.uint8)
    lesion[4:6, 4:6, 4:6] = 1
    hc[lesion == 1] = 8.0
    ct = np.full(SHAPE, -1000.0, np.float32)   # the body: all but a 1-voxel rim of air
    ct[1:-1, 1:-1, 1:-1] = 20.0
    ref = tmp_path / "ref"
    for name, data, dtype in (("hc", hc, np.float32), ("lesion", lesion, np.uint8), ("organs", organs, np.uint8),
                              ("ct", ct, np.float32)):
        write_volume(ref / f"{name}.nii.gz", data, affine, dtype=dtype)
    # p005: perfect; p010: SUV 10 % high everywhere, lesion mask one voxel row too wide
    preds = {}
    for image, scale, extra in (("p005_r0", 1.0, False), ("p010_r0", 1.1, True)):
        d = tmp_path / "pred" / image
        pred_lesion = lesion.copy()
        if extra:
            pred_lesion[6, 4:6, 4:6] = 1
        write_volume(d / "denoised.nii.gz", hc * scale, affine)
        write_volume(d / "lesion.nii.gz", pred_lesion, affine, dtype=np.uint8)
        write_volume(d / "organs.nii.gz", organs, affine, dtype=np.uint8)
        preds[image] = d
    return {"ref": ref, "preds": preds, "hc": hc, "ct": ct, "affine": affine, "tmp": tmp_path}


def evaluate_args(s, out, outputs="denoised,lesion,organs"):
    return ["evaluate", "--model", "amdiff", "--site", "mct", "--subject", "mct004",
            "--hc", str(s["ref"] / "hc.nii.gz"), "--lesion", str(s["ref"] / "lesion.nii.gz"),
            "--organs", str(s["ref"] / "organs.nii.gz"), "--ct", str(s["ref"] / "ct.nii.gz"),
            "--outputs", outputs,
            "--prediction", *(f"{k}={v}" for k, v in s["preds"].items()), "--out", str(out)]


def test_evaluate_writes_one_row_per_image_with_the_expected_values(subject):
    out = subject["tmp"] / "m.tsv"
    assert main(evaluate_args(subject, out)) == 0
    df = pd.read_csv(out, sep="\t")
    assert list(df.columns) == list(COLUMNS)
    assert df.level.tolist() == ["p005", "p010"] and df.count_percent.tolist() == [5.0, 10.0]
    assert df.clinical_percent.tolist() == [5.0, 10.0]   # default: the full list is the clinical count
    perfect, scaled = df.iloc[0], df.iloc[1]
    assert perfect.nrmse_whole == 0 and perfect.dice_lesion == 1 and perfect.tlg_bias_pct == 0
    # 8 voxels of 0.08 mL at SUV 8: MTV 0.64 mL, TLG 5.12 SUV*mL
    assert perfect.mtv_true_ml == pytest.approx(0.64) and perfect.tlg_true == pytest.approx(5.12, rel=1e-5)
    # 8 lesion voxels at SUV 8.8 plus 4 liver voxels, all 10 % high: 12 voxels of 0.08 mL
    assert scaled.mtv_auto_ml == pytest.approx(0.96)
    tlg_auto = 0.08 * 1.1 * (8 * 8.0 + subject["hc"][6, 4:6, 4:6].sum())
    assert scaled.tlg_bias_pct == pytest.approx(100 * (tlg_auto - 5.12) / 5.12, rel=1e-4)
    assert scaled.dice_lesion == pytest.approx(2 * 8 / (8 + 12))
    assert scaled.suvmean_liver_auto == pytest.approx(1.1 * scaled.suvmean_liver_true, rel=1e-5)
    assert scaled.lesions_tp == 1 and scaled.lesions_fp == 0


def test_clinical_percent_is_the_level_over_the_standard_count(subject, capsys):
    """Vision: the standard clinical scan is one 5-min pass, 16.7 % of the 30-min list."""
    import shutil

    vision = subject["tmp"] / "pred" / "p0167_r0"
    shutil.copytree(subject["preds"]["p005_r0"], vision)
    subject["preds"]["p0167_r0"] = vision
    out = subject["tmp"] / "m.tsv"
    assert main(evaluate_args(subject, out)[:-2] + ["--standard-count-percent", "16.7",
                                                     "--out", str(out)]) == 0
    df = pd.read_csv(out, sep="\t").set_index("level")
    assert df.loc["p0167", "count_percent"] == 16.7 and df.loc["p0167", "clinical_percent"] == 100.0
    assert df.loc["p005", "clinical_percent"] == pytest.approx(100 * 5 / 16.7, rel=1e-5)   # 29.9 %
    bad = evaluate_args(subject, out)[:-2] + ["--standard-count-percent", "0", "--out", str(out)]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "site mct: standard count 0.0 %" in err[0]


def test_lesion_match_options_reach_the_metrics(subject):
    """p010's lesion (8 voxels) is predicted with 4 extra voxels: Dice .8, IoU .67."""
    out = subject["tmp"] / "m.tsv"
    strict = ["--lesion-match-metric", "dice", "--lesion-match-threshold", "0.9"]
    assert main(evaluate_args(subject, out)[:-2] + strict + ["--out", str(out)]) == 0
    scaled = pd.read_csv(out, sep="\t").iloc[1]
    assert scaled.lesions_tp == 0 and scaled.lesions_fn == 1 and scaled.lesions_fp == 1
    assert scaled.lesion_f1 == 0


def test_lesion_match_defaults_of_the_command_line_are_the_metrics_defaults():
    from amdiff.cli import build_parser
    from amdiff.evaluate.metrics import LESION_MATCH

    args = build_parser().parse_args(["evaluate", "--model", "m", "--site", "s", "--subject", "x",
                                      "--hc", "h", "--lesion", "l", "--organs", "o",
                                      "--outputs", "lesion", "--prediction", "p005_r0=d",
                                      "--out", "t.tsv"])
    assert {"metric": args.lesion_match_metric,
            "threshold": args.lesion_match_threshold} == LESION_MATCH


def test_whole_image_nrmse_is_over_the_ct_body_by_default(subject, capsys):
    """body_mean (default): RMSE over the CT's body / mean SUV there; image_range: the old reading."""
    hc, body = subject["hc"].astype(float), subject["ct"] > -500
    scaled = 1.1 * hc                                   # the p010 prediction
    out = subject["tmp"] / "m.tsv"
    assert main(evaluate_args(subject, out)) == 0
    rmse_body = np.sqrt(np.mean((scaled[body] - hc[body]) ** 2))
    assert pd.read_csv(out, sep="\t").nrmse_whole.iloc[1] == pytest.approx(rmse_body / hc[body].mean(),
                                                                          rel=1e-5)
    no_ct = [a for a in evaluate_args(subject, out) if a not in ("--ct", str(subject["ref"] / "ct.nii.gz"))]
    assert main(no_ct[:-2] + ["--nrmse-whole", "image_range", "--out", str(out)]) == 0
    rmse_all = np.sqrt(np.mean((scaled - hc) ** 2))
    assert pd.read_csv(out, sep="\t").nrmse_whole.iloc[1] == pytest.approx(rmse_all / np.ptp(hc), rel=1e-5)
    capsys.readouterr()
    assert main(no_ct) == 2                             # a body reading without the CT
    assert "--ct" in capsys.readouterr().err


def test_denoiser_only_model_has_nrmse_but_no_dice(subject):
    out = subject["tmp"] / "m.tsv"
    assert main(evaluate_args(subject, out, outputs="denoised")) == 0
    df = pd.read_csv(out, sep="\t")
    assert df.nrmse_liver.notna().all() and df.dice_liver.isna().all() and df.tlg_auto.isna().all()


def test_missing_prediction_is_one_line_and_writes_nothing(subject, capsys):
    (subject["preds"]["p010_r0"] / "organs.nii.gz").unlink()
    out = subject["tmp"] / "m.tsv"
    assert main(evaluate_args(subject, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "p010_r0/organs.nii.gz" in err[0] and "does not exist" in err[0]
    assert not out.exists()


def test_prediction_on_another_grid_is_refused(subject, capsys):
    moved = subject["affine"].copy()
    moved[0, 3] += 4.0
    write_volume(subject["preds"]["p005_r0"] / "denoised.nii.gz", subject["hc"], moved)
    assert main(evaluate_args(subject, subject["tmp"] / "m.tsv")) == 2
    assert "affine differs" in capsys.readouterr().err


def test_collect_pools_sorts_and_refuses_duplicates(subject, capsys):
    a, b = subject["tmp"] / "a.tsv", subject["tmp"] / "b.tsv"
    assert main(evaluate_args(subject, a)) == 0
    df = pd.read_csv(a, sep="\t")
    df.assign(model="med_ddpm").to_csv(b, sep="\t", index=False)
    out = subject["tmp"] / "all.tsv"
    assert main(["collect-metrics", "--out", str(out), str(a), str(b)]) == 0
    pooled = pd.read_csv(out, sep="\t")
    assert pooled.model.tolist() == ["amdiff", "amdiff", "med_ddpm", "med_ddpm"]
    assert main(["collect-metrics", "--out", str(subject["tmp"] / "dup.tsv"), str(a), str(a)]) == 2
    assert "duplicate row for amdiff mct mct004 p005" in capsys.readouterr().err
    assert not (subject["tmp"] / "dup.tsv").exists()
