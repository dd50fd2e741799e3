"""`amdiff params` prints the paper-size parameter count of every model."""

import re

from amdiff.cli import main
from amdiff.contracts import VARIANTS

from .conftest import REPO
from .test_models_doc import markdown_table


def test_params_lists_amdiff_variants_and_all_six_comparison_models(capsys):
    assert main(["params"]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        m = re.match(r"(\w+)\s+([\d.]+) M", line)
        if m:
            rows[m.group(1)] = float(m.group(2))
    expected = {"amdiff", "amdiff_no_revision", "amdiff_no_organ_reg", "amdiff_no_lesion_reg",
                "amdiff_no_lor", "amdiff_no_resmamba", "med_ddpm", "leqmod_gan", "spach_transformer",
                "swin_unetr", "nnmamba", "medsam3d"}
    assert set(rows) == expected
    # the ablations of the loss keep AMDiff's network
    assert rows["amdiff_no_lor"] == rows["amdiff_no_organ_reg"] == rows["amdiff"]
    # reports/models.md prints the same counts
    doc = markdown_table((REPO / "reports" / "models.md").read_text(),
                         "| model | parameters | input | output | losses | source |")
    for name in VARIANTS:
        assert doc[name][0].startswith(f"{rows[name]:.2f} M"), name
    # the ablation without ResMamba is the same network minus the Mamba layers
    assert rows["amdiff_no_resmamba"] < rows["amdiff"]
    # Med-DDPM is AMDiff's diffusion module alone
    assert rows["med_ddpm"] < rows["amdiff_no_revision"] <= rows["amdiff"]
    assert 15.5 < rows["nnmamba"] < 16.2 and 100 < rows["medsam3d"] < 110
