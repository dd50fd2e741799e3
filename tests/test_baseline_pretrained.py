"""Med-SAM starts from a SAM-Med3D checkpoint named by ``baselines.pretrained.medsam3d``."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import tests.test_train as tt
from amdiff import cli
from amdiff.errors import InputError
from amdiff.io.manifest import write_manifest
from amdiff.config import fill_defaults
from amdiff.models.amdiff import build_model
from amdiff.models.baselines import medsam3d as ms
from amdiff.train.baselines import BaselineTrainer
from amdiff.train.checkpoint import save_checkpoint
from tests.conftest import REPO
from tests.test_baseline_medsam3d import sam_med3d_like_checkpoint

KEY = "baselines.pretrained.medsam3d"
CONFIG = copy.deepcopy(tt.CONFIG)
CONFIG["training"].update(patch_size=[32, 32, 32], patches_per_epoch=2, val_patches=1, batch_size=2)
CONFIG["inference"] = {"patch_size": [32, 32, 32], "overlap": 0.0, "sampler": "ddim", "steps": 2}
CONFIG["baselines"] = {"size": "demo"}
fill_defaults(CONFIG)   # as validation leaves a config: every left-out key at its default


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A 32^3 train/val cohort and an untrained Med-DDPM checkpoint (construction needs both)."""
    root = tmp_path_factory.mktemp("cohort_pretrained")
    rng = np.random.default_rng(4)
    old, tt.SHAPE = tt.SHAPE, (32, 32, 32)
    try:
        rows = [tt._subject(root, f"s{i}", split, rng) for i, split in enumerate(["train", "val"])]
    finally:
        tt.SHAPE = old
    write_manifest(pd.DataFrame(rows), root / "manifest.tsv")
    save_checkpoint(root / "med_ddpm.pt", {"model": build_model("med_ddpm", CONFIG).state_dict(),
                                           "variant": "med_ddpm", "config": CONFIG})
    return root


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory):
    """(path, source encoder state) of a SAM-Med3D-style file with a 2-channel patch embedding."""
    torch.manual_seed(123)
    src = ms.build(**ms.DEMO)
    path = tmp_path_factory.mktemp("sam") / "sam_med3d_demo.pth"
    torch.save(sam_med3d_like_checkpoint(src), path)
    return path, src.image_encoder.state_dict()


def _trainer(cohort, out, pretrained=None) -> BaselineTrainer:
    config = copy.deepcopy(CONFIG)
    if pretrained is not None:
        config["baselines"]["pretrained"] = {"medsam3d": str(pretrained)}
    return BaselineTrainer(config, "medsam3d", "mct", cohort / "manifest.tsv", out,
                           denoiser_checkpoint=cohort / "med_ddpm.pt")


def test_pretrained_key_initialises_the_image_encoder(cohort, sam_checkpoint, tmp_path, capsys):
    path, src = sam_checkpoint
    with_key = _trainer(cohort, tmp_path / "a", path).model
    log = capsys.readouterr().err
    assert "image encoder initialised from" in log and "sam_med3d_demo.pth" in log
    without = _trainer(cohort, tmp_path / "b").model
    assert capsys.readouterr().err == ""
    loaded, fresh = with_key.image_encoder.state_dict(), without.image_encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in src.items())
    assert not any(torch.equal(fresh[k], v) for k, v in src.items() if v.std() > 0)
    # only the encoder comes from the file; the rest is the same seeded initialisation
    assert all(torch.equal(v, without.mask_decoder.state_dict()[k])
               for k, v in with_key.mask_decoder.state_dict().items())


def _garbage(path):
    path.write_bytes(b"not a checkpoint")
    return path


@pytest.mark.parametrize("make, match", [
    (lambda p: p, "file does not exist"),
    (_garbage, r"cannot read|refused by torch\.load"),   # which one depends on the bytes
])
def test_bad_pretrained_file_names_the_key_and_the_file(cohort, tmp_path, make, match):
    bad = make(tmp_path / "bad_sam.pth")
    with pytest.raises(InputError, match=match) as err:
        _trainer(cohort, tmp_path / "out", bad)
    assert str(err.value).startswith(f"{KEY}: ") and "bad_sam.pth" in str(err.value)


def test_cli_reports_a_missing_pretrained_file_in_one_line(cohort, tmp_path, capsys):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["baselines"]["pretrained"] = {"medsam3d": str(tmp_path / "missing_sam.pth")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    rc = cli.main(["train", "--config", str(tmp_path / "c.yaml"), "--manifest", str(cohort / "manifest.tsv"),
                   "--site", "mct", "--variant", "medsam3d", "--out-dir", str(tmp_path / "out"),
                   "--denoiser-checkpoint", str(cohort / "med_ddpm.pt")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert KEY in err and "missing_sam.pth" in err
