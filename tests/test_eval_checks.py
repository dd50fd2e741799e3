"""Study checks: trained denoisers against the low-count input and the Gaussian filter, Dice
against the targets; a missing model is n/a, never a pass."""

import math

import pandas as pd

from amdiff.evaluate import checks


def _case(model, site, subject, level, **metrics):
    return {"model": model, "site": site, "subject": subject, "count_percent": level, **metrics}


def _metrics() -> pd.DataFrame:
    rows = []
    for subject, lc in (("s1", 0.30), ("s2", 0.40)):
        for level, scale in ((5.0, 1.0), (40.0, 0.5)):
            rows += [_case("lowcount_input", "mct", subject, level, nrmse_whole=lc * scale),
                     _case("gaussian_filter", "mct", subject, level, nrmse_whole=0.8 * lc * scale),
                     # AMDiff better than both everywhere; Med-DDPM worse than the input at 40 %
                     _case("amdiff", "mct", subject, level, nrmse_whole=0.5 * lc * scale,
                           dice_lesion=0.6, dice_liver=0.9, dice_lung=0.7),
                     _case("med_ddpm", "mct", subject, level, nrmse_whole=lc * (0.9 if level == 5.0 else 1.2)),
                     _case("swin_unetr", "mct", subject, level, dice_lesion=0.2, dice_liver=0.85,
                           dice_lung=0.9)]
    return pd.DataFrame(rows)


def test_denoisers_are_judged_against_the_input_at_every_level():
    table = checks.study_checks(_metrics())
    nrmse = table[table["check"].str.startswith("nrmse_whole")].set_index(["model", "count_percent", "check"])
    assert nrmse.loc[("med_ddpm", 5.0, "nrmse_whole below lowcount_input"), "result"] == "pass"
    row = nrmse.loc[("med_ddpm", 40.0, "nrmse_whole below lowcount_input")]
    assert row["result"] == "fail" and row["value"] > row["target"]
    assert row["value"] == 0.35 * 1.2 and math.isclose(row["target"], 0.175) and row["n_images"] == 2
    assert (nrmse.loc[("amdiff", 5.0, "nrmse_whole below gaussian_filter"), "result"]) == "pass"
    # segmenters are not denoisers; the training-free rows are not judged
    assert set(nrmse.index.get_level_values("model")) == {"amdiff", "med_ddpm"}


def test_dice_targets_and_missing_models():
    table = checks.study_checks(_metrics())
    dice = table[table["check"].str.startswith("dice")].set_index(["model", "check"])
    assert dice.loc[("amdiff", "dice_lesion at least"), "result"] == "pass"
    assert dice.loc[("amdiff", "dice_lung at least"), "result"] == "fail"
    assert dice.loc[("swin_unetr", "dice_lesion at least"), "result"] == "fail"
    assert dice.loc[("swin_unetr", "dice_liver at least"), "target"] == 0.8
    # without the Gaussian row AMDiff's comparison with it cannot pass
    no_gauss = checks.study_checks(_metrics().query("model != 'gaussian_filter'"))
    gauss = no_gauss[no_gauss["check"] == "nrmse_whole below gaussian_filter"]
    assert set(gauss["result"]) == {"n/a"}
    md = checks.to_markdown(table)
    assert "| nrmse_whole below lowcount_input | med_ddpm | mct | 40 |" in md and "**fail**" in md
