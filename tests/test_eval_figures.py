"""Evaluation figures: regression statistics, case choice, slice choice, panel captions, files."""

from __future__ import annotations

import matplotlib.colors
import matplotlib.text
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from amdiff.evaluate import figures as F
from amdiff.io.nifti import centered_affine, write_volume


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text)]


def assert_png_pdf(png, pdf) -> None:
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"


def quant_table(true, auto, model="amdiff", site="mct") -> pd.DataFrame:
    n = len(true)
    return pd.DataFrame({"model": model, "site": site, "subject": [f"s{i}" for i in range(n)],
                         "level": "p005", "realization": 0, "count_percent": 5.0,
                         "mtv_true_ml": true, "mtv_auto_ml": auto})


# ---- regression -------------------------------------------------------------------------------

def test_regression_stats_exact_line():
    true = np.array([1.0, 2.0, 4.0, 7.0, 11.0])
    out = F.regression_stats(quant_table(true, 2 * true + 1), ["amdiff"], ["mtv"])
    row = out.iloc[0]
    assert (row["model"], row["quantity"], row["n"]) == ("amdiff", "mtv", 5)
    assert row["slope"] == pytest.approx(2.0)
    assert row["intercept"] == pytest.approx(1.0)
    assert row["r2"] == pytest.approx(1.0)


def test_regression_stats_matches_scipy_on_noisy_data():
    rng = np.random.default_rng(3)
    true = rng.uniform(1, 50, 40)
    auto = 0.9 * true + 2 + rng.normal(0, 4, 40)
    ref = stats.linregress(true, auto)
    row = F.regression_stats(quant_table(true, auto), ["amdiff"], ["mtv"]).iloc[0]
    assert row["slope"] == pytest.approx(ref.slope)
    assert row["intercept"] == pytest.approx(ref.intercept)
    assert row["r2"] == pytest.approx(ref.rvalue ** 2)
    assert 0.5 < row["r2"] < 1.0


def test_regression_stats_drops_nan_and_needs_three_points():
    true = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    auto = np.array([3.0, 5.5, 7.0, np.nan, 10.0, 13.5])
    df = pd.concat([quant_table(true, auto), quant_table([1.0, 2.0], [2.0, 4.0], model="amdiff_no_revision")])
    out = F.regression_stats(df, ["amdiff", "amdiff_no_revision", "nnmamba"], ["mtv"]).set_index("model")
    keep = np.isfinite(true) & np.isfinite(auto)
    ref = stats.linregress(true[keep], auto[keep])
    assert out.at["amdiff", "n"] == 4
    assert out.at["amdiff", "slope"] == pytest.approx(ref.slope)
    assert out.at["amdiff", "r2"] == pytest.approx(ref.rvalue ** 2)
    assert out.at["amdiff_no_revision", "n"] == 2
    assert np.isnan(out.at["amdiff_no_revision", "r2"])
    assert out.at["nnmamba", "n"] == 0 and np.isnan(out.at["nnmamba", "slope"])


def test_regression_stats_covers_all_four_quantities():
    true = np.arange(1.0, 6.0)
    df = quant_table(true, true)
    for c in ("tlg", "suvmean_liver", "suvmean_aorta"):
        df[f"{c}_true"] = true
        df[f"{c}_auto"] = 3 * true - 1
    out = F.regression_stats(df, ["amdiff"]).set_index("quantity")
    assert list(out.index) == ["mtv", "tlg", "suvmean_liver", "suvmean_aorta"]
    assert out.loc["suvmean_aorta", "slope"] == pytest.approx(3.0)
    assert out.loc["tlg", "intercept"] == pytest.approx(-1.0)


def test_regression_figure_texts_and_files(tmp_path):
    true = np.array([1.0, 2.0, 4.0, 7.0, 11.0])
    df = quant_table(true, 2 * true + 1)
    png, pdf = tmp_path / "fig7.png", tmp_path / "fig7.pdf"
    fig = F.regression_figure(df, ["nnmamba", "amdiff"], png, pdf, quantities=["mtv"])
    strings = texts(fig)
    assert any("R² = 1.000" in s and "n = 5" in s and "y = 2x + 1" in s for s in strings)
    assert "no data" in strings                                  # nnmamba has no rows
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["AMDiff\nMTV", "nnMamba\nMTV"]              # AMDiff family first
    assert fig.axes[0].get_xlabel() == "ground truth (mL)"
    assert_png_pdf(png, pdf)
    assert not list(tmp_path.glob(".*tmp*"))                      # atomic write left no temporaries


def test_regression_figure_leads_with_the_papers_fig7_models(tmp_path):
    """Paper Fig. 7: AMDiff, w/o (lesion-organ) regularizer, w/o revision; then the rest."""
    true = np.array([1.0, 2.0, 4.0])
    models = ["nnmamba", "amdiff_no_organ_reg", "amdiff_no_revision", "amdiff_no_lor", "amdiff"]
    df = pd.concat([quant_table(true, true + k, model=m) for k, m in enumerate(models)])
    assert F.order_models(models) == ["amdiff", "amdiff_no_lor", "amdiff_no_revision",
                                      "amdiff_no_organ_reg", "nnmamba"]
    fig = F.regression_figure(df, models, tmp_path / "f.png", quantities=["mtv"])
    assert [ax.get_title() for ax in fig.axes][:3] == [
        "AMDiff\nMTV", "AMDiff w/o lesion-organ regularizer\nMTV", "AMDiff w/o denoising revision\nMTV"]
    stats_ = F.regression_stats(df, models, ["mtv"]).set_index("model")
    assert stats_.at["amdiff_no_lor", "n"] == 3
    assert stats_.at["amdiff_no_lor", "intercept"] == pytest.approx(3.0)


def _visible_tick_labels(axis) -> list[str]:
    """Texts of the major tick labels inside the axis's view (after a draw)."""
    low, high = sorted(axis.get_view_interval())
    return [t.label1.get_text() for t in axis.get_major_ticks() if low <= t.get_loc() <= high]


def test_regression_panel_shows_true_values_when_automatic_ones_are_far_larger(tmp_path):
    """An nnMamba-like model: automatic MTV ~1000x the truth. Equal limits squashed the true
    values onto a line, ticks ran together ("1000020000...") and the offset met the title."""
    true = np.linspace(1.0, 40.0, 12)
    auto = 1000.0 * true + 20000.0
    fig = F.regression_figure(quant_table(true, auto), ["amdiff"], tmp_path / "f.png", quantities=["mtv"])
    ax = fig.axes[0]
    fig.canvas.draw()
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 <= true.min() and x1 >= true.max() and y0 <= auto.min() and y1 >= auto.max()
    assert x1 - x0 < 2 * np.ptp(true)                 # the truth spreads over the x axis
    assert y1 - y0 < 2 * np.ptp(auto)
    assert any("axes: own ranges" in t for t in texts(fig))
    for axis in (ax.xaxis, ax.yaxis):
        labels = _visible_tick_labels(axis)
        assert 2 <= len(labels) <= F.MAX_TICKS
        assert all(len(label) <= 5 for label in labels), labels
        assert axis.get_offset_text().get_text() == ""  # no "1e4" next to the title


def test_regression_limits_are_shared_while_both_variables_spread():
    x = np.array([1.0, 4.0, 10.0])
    xlim, ylim, shared = F.regression_limits(x, 1.1 * x + 0.5)
    assert shared and xlim == ylim and xlim[0] < 1.0 and xlim[1] > 11.5
    assert F.regression_limits(x, np.full(3, 5.0))[2]            # a constant squashes nothing
    xlim, ylim, shared = F.regression_limits(x, 1000 * x)
    assert not shared and xlim[1] < 11 and ylim[0] > 500


def test_compact_tick_labels():
    assert [F.compact_number(v) for v in (0.25, -0.0, 250, 9000, 50000, 12500, 3e6)] == [
        "0.25", "0", "250", "9000", "50k", "12.5k", "3M"]


# ---- case and slice choice ----------------------------------------------------------------------

def test_choose_case_order():
    rows = [  # model, site, subject, level, realization, count_percent, mtv_true_ml
        ("amdiff", "mct", "mct001", "p010", 0, 10.0, 99.0),       # more MTV but higher count level
        ("amdiff", "mct", "mct003", "p005", 0, 5.0, 12.0),
        ("amdiff", "mct", "mct002", "p005", 1, 5.0, 12.0),        # ties on MTV: mct002 < mct003
        ("amdiff", "mct", "mct002", "p005", 0, 5.0, 12.0),        # ... and realization 0 first
        ("med_ddpm", "mct", "mct004", "p005", 0, 5.0, np.nan),    # NaN for one model, 3.0 for another
        ("amdiff", "mct", "mct004", "p005", 0, 5.0, 3.0),
        ("amdiff", "vision", "vision001", "p001", 0, 1.0, 500.0),  # other site ignored
    ]
    df = pd.DataFrame(rows, columns=["model", "site", "subject", "level", "realization", "count_percent",
                                     "mtv_true_ml"])
    case = F.choose_case(df, "mct")
    assert (case.subject, case.level, case.realization, case.image) == ("mct002", "p005", 0, "p005_r0")
    assert case.count_percent == 5.0 and case.mtv_true_ml == 12.0
    # larger MTV wins over name at the same level; the level comes from the name when the percent is NaN
    df.loc[df["subject"] == "mct004", "mtv_true_ml"] = 40.0
    df.loc[df["subject"] == "mct004", "count_percent"] = np.nan
    assert F.choose_case(df, "mct").subject == "mct004"
    with pytest.raises(Exception, match="no test cases"):
        F.choose_case(df, "uexplorer")


def sphere(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def test_lesion_slice_largest_sphere_and_fallback():
    shape = (24, 32, 20)
    mask = sphere(shape, (6, 7, 6), 2.0) | sphere(shape, (15, 21, 12), 4.0)
    assert F.lesion_slice(mask.astype(np.uint8)) == 21
    assert F.lesion_slice(np.zeros(shape, np.uint8)) == 16


def test_lesion_slice_uses_26_connectivity():
    mask = np.zeros((20, 40, 20), bool)
    mask[5:8, 10:13, 5:8] = True        # 27 voxels
    mask[8:11, 13:17, 8:11] = True      # 36 voxels, touching the first only at a corner: 63 together
    mask[2:6, 25:28, 12:16] = True      # 48 voxels: the largest only under 6-connectivity
    assert F.lesion_slice(mask) == 13


def test_coronal_slice_orientation():
    vol = np.zeros((5, 4, 6))
    vol[4, 2, 5] = 1.0   # RAS+: x=4 is the patient's right-most column, z=5 the most superior row
    vol[0, 2, 0] = 2.0   # patient's left, inferior
    plane = F.coronal_slice(vol, 2)
    assert plane.shape == (6, 5)                    # rows = z, columns = x
    assert plane[0, 0] == 1.0                        # superior up, patient right on the viewer's left
    assert plane[-1, -1] == 2.0
    assert not F.coronal_slice(vol, 1).any()


# ---- slice panels -------------------------------------------------------------------------------

def phantom(shape=(12, 10, 16), seed=0):
    rng = np.random.default_rng(seed)
    hc = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    lesion = sphere(shape, (6, 6, 8), 2.0).astype(np.uint8)
    hc[lesion > 0] = 8.0
    organs = np.zeros(shape, np.uint8)
    organs[2:5, :, 2:6] = 1
    organs[7:10, :, 9:14] = 5
    return hc, lesion, organs


def test_denoising_panels_captions_slice_and_files(tmp_path):
    hc, lesion, _ = phantom()
    lc = hc + np.random.default_rng(1).normal(0, 0.5, hc.shape).astype(np.float32)
    images = {"LC input": lc, "AMDiff": hc * 0.9, "Med-DDPM": hc * 1.1, "HC reference": hc}
    metrics = {"AMDiff": (0.1234, 0.0456), "Med-DDPM": (0.2, np.nan)}
    png, pdf = tmp_path / "fig4.png", tmp_path / "fig4.pdf"
    fig = F.denoising_panels(images, metrics, png, pdf, truth_lesion=lesion, voxel_mm=(2.0, 2.0, 3.0),
                             missing=["LeqMod-GAN"])
    strings = texts(fig)
    assert "NRMSE lesion 0.123\nNRMSE liver 0.046" in strings
    assert "NRMSE lesion 0.200\nNRMSE liver n/a" in strings
    assert "no predictions: LeqMod-GAN" in strings
    panels = [ax for ax in fig.axes if ax.get_title() in images]
    assert [ax.get_title() for ax in panels] == list(images)
    shown = panels[-1].images[0].get_array()
    np.testing.assert_array_equal(shown, F.coronal_slice(hc, 6))      # slice through the lesion centroid
    assert panels[-1].images[0].get_extent() == [0.0, 24.0, 0.0, 48.0]  # mm, anisotropic voxels
    windows = {ax.images[0].get_clim() for ax in panels}
    assert len(windows) == 1                                           # one shared SUV window
    assert_png_pdf(png, pdf)


def test_lesion_panels_dice_and_contours(tmp_path):
    hc, lesion, _ = phantom()
    masks = {"AMDiff": lesion, "SwinUNETR": np.zeros_like(lesion)}
    png, pdf = tmp_path / "fig5.png", tmp_path / "fig5.pdf"
    fig = F.lesion_panels(hc, masks, {"AMDiff": 0.75, "SwinUNETR": np.nan}, lesion, png, pdf)
    by_title = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert by_title["AMDiff"].get_xlabel() == "Dice 0.750"
    assert by_title["SwinUNETR"].get_xlabel() == "Dice n/a"
    assert by_title["Ground truth"].get_xlabel() == "reference"
    assert len(by_title["AMDiff"].collections) == 2      # true (dashed) and predicted outlines
    assert len(by_title["SwinUNETR"].collections) == 1   # empty prediction: only the true outline
    assert_png_pdf(png, pdf)


def _panel_rows(fig, titles) -> list[int]:
    return [ax.get_subplotspec().rowspan.start for ax in fig.axes if ax.get_title() in titles]


def test_slice_panels_wrap_into_rows(tmp_path):
    """Eleven Fig. 4 panels (input, 9 denoisers, reference) in one 4605 x 870 row were legible
    only zoomed in: at most PANELS_PER_ROW per row, spread evenly."""
    assert [F.panel_grid(n) for n in (1, 4, 5, 6, 10, 11)] == [(1, 1), (1, 4), (1, 5), (2, 3),
                                                               (2, 5), (3, 4)]
    hc, lesion, _ = phantom()
    images = {f"model {k}": hc * (1 + 0.01 * k) for k in range(11)}
    fig = F.denoising_panels(images, {}, tmp_path / "fig4.png", truth_lesion=lesion)
    rows = _panel_rows(fig, images)
    assert len(rows) == 11 and max(rows) == 2                    # three rows
    assert max(rows.count(r) for r in set(rows)) <= F.PANELS_PER_ROW
    assert len(fig.axes) == 11 + 1                               # the panels and the colorbar; no blank cell
    width, height = fig.get_size_inches()
    assert width < 2 * height                                    # no longer a strip


def test_lesion_panels_name_the_underlay_show_its_scale_and_draw_truth_alike(tmp_path):
    hc, lesion, _ = phantom()
    shifted = np.roll(lesion, 1, axis=0)
    masks = {"AMDiff": lesion, "nnMamba": shifted, "SwinUNETR": shifted}
    fig = F.lesion_panels(hc, masks, {}, lesion, tmp_path / "fig5.png", title="Lesions",
                          underlay="high-count reference")
    assert fig.get_suptitle() == "Lesions\nunderlay: high-count reference"
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 1 and "SUV" in colorbars[0].get_ylabel()
    truth = matplotlib.colors.to_rgba(F.TRUTH_COLOUR)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(panels) == {*masks, "Ground truth"}
    for title, ax in panels.items():
        colours = [tuple(c.get_edgecolor()[0]) for c in ax.collections]
        assert colours.count(truth) == 1, title                  # the true outline, one colour
    assert tuple(panels["Ground truth"].collections[0].get_edgecolor()[0]) == truth


def test_organ_panels_caption(tmp_path):
    hc, lesion, organs = phantom()
    dice = {"AMDiff": {"liver": 0.9, "kidney": 0.5, "lung": np.nan, "aorta": 1.0}}
    png, pdf = tmp_path / "fig6.png", tmp_path / "fig6.pdf"
    fig = F.organ_panels(hc, {"AMDiff": organs}, dice, organs, png, pdf, truth_lesion=lesion)
    assert "Dice mean 0.800\nworst kidney 0.500" in texts(fig)
    assert F.organ_caption({"liver": np.nan}) == "Dice n/a"
    overlay = fig.axes[0].images[1].get_array()         # RGBA organ layer over the PET
    assert overlay.shape[-1] == 4 and overlay[..., 3].max() > 0
    assert_png_pdf(png, pdf)


def test_write_slice_figures_end_to_end(tmp_path):
    hc, lesion, organs = phantom()
    shape = hc.shape
    affine = centered_affine(shape, (4.0, 4.0, 4.0))
    ref = tmp_path / "mct" / "mct001"
    write_volume(ref / "hc.nii.gz", hc, affine)
    write_volume(ref / "lc_p005_r0.nii.gz", hc + 0.3, affine)
    write_volume(ref / "lesion.nii.gz", lesion, affine, np.uint8)
    write_volume(ref / "organs.nii.gz", organs, affine, np.uint8)
    pred = tmp_path / "predictions"
    for item, data, dtype in (("denoised", hc, np.float32), ("lesion", lesion, np.uint8),
                              ("organs", organs, np.uint8)):
        write_volume(pred / "amdiff" / "mct" / "mct001" / "p005_r0" / f"{item}.nii.gz", data, affine, dtype)
    write_volume(pred / "med_ddpm" / "mct" / "mct001" / "p005_r0" / "denoised.nii.gz", hc, affine)
    models = ["amdiff", "med_ddpm", "nnmamba"]
    case = F.load_case(tmp_path, "mct", "mct001", "p005_r0", models)
    assert set(case.denoised) == {"amdiff", "med_ddpm"} and set(case.lesion_pred) == {"amdiff"}
    assert case.missing == ["nnmamba"]
    metrics = pd.DataFrame({"model": models, "site": "mct", "subject": "mct001", "level": "p005",
                            "realization": 0, "count_percent": 5.0, "mtv_true_ml": 2.0,
                            "nrmse_lesion": [0.1, 0.2, np.nan], "nrmse_liver": [0.05, 0.06, np.nan],
                            "dice_lesion": [0.8, np.nan, 0.3]})
    paths = F.write_slice_figures(tmp_path, metrics, "mct", models, tmp_path / "figs")
    assert set(paths) == {"denoising", "lesions", "organs"}
    assert paths["lesions"][0].name == "fig5_lesions_mct.png"
    for png, pdf in paths.values():
        assert_png_pdf(png, pdf)


def test_load_case_reorients_to_ras(tmp_path):
    hc, lesion, organs = phantom()
    las = centered_affine(hc.shape, (4.0, 4.0, 4.0))
    las[0, :] *= -1                                   # x stored right-to-left
    ref = tmp_path / "s" / "a"
    write_volume(ref / "hc.nii.gz", hc, las)
    write_volume(ref / "lc_p005_r0.nii.gz", hc, las)
    write_volume(ref / "lesion.nii.gz", lesion, las, np.uint8)
    write_volume(ref / "organs.nii.gz", organs, las, np.uint8)
    case = F.load_case(tmp_path, "s", "a", "p005_r0", [])
    np.testing.assert_array_equal(case.organs, organs[::-1])
    assert case.voxel_mm == (4.0, 4.0, 4.0)


# ---- training curves ----------------------------------------------------------------------------

def test_training_curves_two_families(tmp_path):
    amdiff = pd.DataFrame({"epoch": [0, 1, 2, 3], "lambda_warm": [0.0, 0.0, 0.3, 0.7],
                           "train_total": [3.0, 2.0, 1.5, 1.4],
                           "train_diff": 1.0, "val_score": [1.7, 1.6, 1.65, 1.62], "best": [1, 1, 0, 0]})
    spach = pd.DataFrame({"epoch": [0, 1, 2], "train_l1": [0.5, 0.3, 0.2], "train_l1_suv": 1.0,
                          "val_nrmse": [0.3, 0.2, 0.25], "val_score": [0.3, 0.2, 0.25], "lr_adam": 1e-3})
    logs = {}
    for (model, site), log in {("spach_transformer", "mct"): spach, ("amdiff", "mct"): amdiff,
                               ("amdiff_no_revision", "uexplorer"): amdiff}.items():
        path = tmp_path / model / site / "log.csv"
        path.parent.mkdir(parents=True)
        log.to_csv(path, index=False)
        logs[(model, site)] = path
    assert F.train_column(spach) == "train_l1" and F.best_epoch(spach) == 1
    assert F.best_epoch(amdiff) == 1
    png, pdf = tmp_path / "curves.png", tmp_path / "curves.pdf"
    fig = F.training_curves(logs, png, pdf)
    tops = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in tops] == ["AMDiff + ablations", "SpachTransformer"]
    assert [ax.get_ylabel() for ax in tops] == ["train_total", "train_l1"]
    assert len(tops[0].get_lines()) == 2                  # AMDiff and its ablation share a panel
    stars = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_marker() == "*"]
    assert sorted((float(s.get_xdata()[0]), float(s.get_ydata()[0])) for s in stars) == \
        [(1.0, 0.2), (1.0, 1.6), (1.0, 1.6)]
    # the AMDiff panel explains why its training loss can rise
    assert any(s.startswith("λ_warm ramps 0 → 0.7") for s in texts(fig))
    assert_png_pdf(png, pdf)
    with pytest.raises(Exception, match="does not exist"):
        F.training_curves({"amdiff/mct": tmp_path / "nope.csv"})
