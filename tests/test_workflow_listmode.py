"""The workflow on your own list-mode data of a scanner only its PETSIRD header describes: a
manifest's `listmode` column with a two-module-type TOF list goes through down-sampling and
reconstruction (`recon.engine: listmode`) to SUV images on the CT's grid."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from amdiff.io.nifti import centered_affine, read_volume, write_volume
from tests.petsird_scanners import simulate, two_type_tof_header
from tests.test_workflow import snakemake

SHAPE, VOXEL = (24, 24, 8), (6.0, 6.0, 3.0)
WEIGHT_KG, INJECTED_MBQ = 70.0, 300.0


def _own_data(root):
    """Data of one test subject: the list, a CT (water cylinder), an SUV image and a lesion."""
    data = root / "data"
    data.mkdir()
    x = (np.arange(SHAPE[0]) - (SHAPE[0] - 1) / 2) * VOXEL[0]
    xx, yy = np.meshgrid(x, x, indexing="ij")
    body = np.repeat((xx ** 2 + yy ** 2 <= 50 ** 2)[:, :, None], SHAPE[2], 2)
    hot = np.repeat(((xx - 20) ** 2 + yy ** 2 <= 10 ** 2)[:, :, None], SHAPE[2], 2)
    activity = (10.0 * body + 30.0 * hot).astype(np.float32)                 # Bq/mL
    simulate(data / "s1.petsird", two_type_tof_header(calibration_factor=0.005), activity,
             (0.096 * body).astype(np.float32), VOXEL, duration_s=60.0, randoms_per_line=0.2)
    affine = centered_affine(SHAPE, VOXEL)
    write_volume(data / "ct.nii.gz", np.where(body, 0.0, -1000.0).astype(np.float32), affine)
    suv_per_bqml = WEIGHT_KG * 1000 / (INJECTED_MBQ * 1e6)
    write_volume(data / "hc.nii.gz", activity * suv_per_bqml, affine)
    write_volume(data / "lesion.nii.gz", hot.astype(np.uint8), affine, dtype=np.uint8)
    (root / "manifest.tsv").write_text(
        "subject\tsite\tsplit\thc_pet\tlistmode\tct\tlesion\tweight_kg\tinjected_mbq\n"
        f"s1\ttwotype\ttest\tdata/hc.nii.gz\tdata/s1.petsird\tdata/ct.nii.gz\tdata/lesion.nii.gz\t"
        f"{WEIGHT_KG}\t{INJECTED_MBQ}\n")
    background = (xx ** 2 + yy ** 2 <= 35 ** 2) & ((xx - 20) ** 2 + yy ** 2 > 16 ** 2)
    return 10.0 * suv_per_bqml, background


def _config(repo, root):
    cfg = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    site = cfg["sites"]["mct"]
    site.update(description="a scanner only its PETSIRD header describes (two module types, TOF)",
                split={"train": 0, "val": 0, "test": 1},
                image={"shape": list(SHAPE), "voxel_size_mm": list(VOXEL)},
                recon={"engine": "listmode", "iterations": 3, "subsets": 4, "postfilter_fwhm_mm": 0.0},
                count_levels={"test": [25]})
    cfg["sites"] = {"twotype": site}
    cfg["cohort"] = {"source": "manifest", "manifest": str(root / "manifest.tsv"), "data_roots": [str(root)]}
    cfg["labels"] = {"method": "provided"}
    cfg["results_dir"] = str(root / "results")
    for section in ("models", "training", "diffusion", "inference", "baselines", "evaluation"):
        cfg.pop(section, None)                 # the data stages only
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.slow
def test_a_two_module_type_tof_list_goes_through_the_workflow_to_suv_images(repo, venv_env, tmp_path):
    truth_suv, background = _own_data(tmp_path)
    config = _config(repo, tmp_path)
    subject = tmp_path / "results" / "twotype" / "s1"
    targets = [str(subject / "hc.nii.gz"), str(subject / "lc_p025_r0.nii.gz")]
    result = snakemake(repo, tmp_path, venv_env, "--configfile", str(config), "--cores", "1", *targets,
                       timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    for name, tolerance in (("hc", 0.05), ("lc_p025_r0", 0.08)):
        image = read_volume(subject / f"{name}.nii.gz", kind="suv")
        np.testing.assert_allclose(image.affine, centered_affine(SHAPE, VOXEL), atol=1e-4)
        inner = image.data[:, :, 2:6][background]                       # slices the scanner covers
        assert inner.mean() == pytest.approx(truth_suv, rel=tolerance), name
