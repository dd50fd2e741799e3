"""Organ labels: TotalSegmentator class mapping, the offline weights check, label_ct, provided maps."""

from __future__ import annotations

import inspect
import os
import socket

import nibabel as nib
import numpy as np
import pytest
from totalsegmentator.map_to_binary import class_map
from totalsegmentator.nifti_ext_header import add_label_map_to_nifti

from amdiff.errors import InputError
from amdiff.io.nifti import Volume, centered_affine, load_provided_labels, read_volume, write_volume
from amdiff.labels import totalseg
from amdiff.labels.totalseg import (
    build_mapping,
    label_ct,
    label_table_from_header,
    map_multilabel,
    organ_mapping,
    roi_subset,
)

TS = class_map["total"]
TS_ID = {name: i for i, name in TS.items()}
LIVER, LUNG, BONE, MUSCLE, KIDNEY, SPLEEN, AORTA = range(1, 8)

# (TotalSegmentator structure, organ id we expect); ids come from the installed class map.
CASES = [
    ("liver", LIVER), ("spleen", SPLEEN), ("aorta", AORTA),
    ("lung_upper_lobe_left", LUNG), ("lung_middle_lobe_right", LUNG), ("lung_lower_lobe_right", LUNG),
    ("vertebrae_C1", BONE), ("vertebrae_T12", BONE), ("vertebrae_L5", BONE), ("vertebrae_S1", BONE),
    ("rib_left_1", BONE), ("rib_right_12", BONE), ("sacrum", BONE), ("sternum", BONE), ("skull", BONE),
    ("hip_left", BONE), ("femur_right", BONE), ("humerus_left", BONE), ("scapula_right", BONE),
    ("clavicula_left", BONE),
    ("autochthon_left", MUSCLE), ("iliopsoas_right", MUSCLE), ("gluteus_maximus_left", MUSCLE),
    ("gluteus_minimus_right", MUSCLE),
    ("kidney_left", KIDNEY), ("kidney_right", KIDNEY),
    # documented exclusions -> background
    ("costal_cartilages", 0), ("kidney_cyst_left", 0), ("heart", 0), ("gallbladder", 0),
    ("spinal_cord", 0), ("brain", 0),
]


def synthetic_ts_labels(shape=(8, 8, 8)):
    """One voxel per case, in order; returns the TotalSegmentator array and the expected organ map."""
    ts = np.zeros(shape, dtype=np.uint8)
    expected = np.zeros(shape, dtype=np.uint8)
    flat_ts, flat_exp = ts.reshape(-1), expected.reshape(-1)
    for k, (name, organ) in enumerate(CASES):
        flat_ts[k] = TS_ID[name]
        flat_exp[k] = organ
    flat_ts[len(CASES)] = 250  # an id the class map does not name
    return ts, expected


def test_mapping_covers_expected_structures():
    mapping = organ_mapping()
    counts = np.bincount(list(mapping.values()), minlength=8)
    # 25 vertebrae + 24 ribs + sacrum/sternum/skull + 10 paired long/girdle bones = 62
    assert counts.tolist() == [0, 1, 5, 62, 10, 2, 1, 1]
    assert "costal_cartilages" not in mapping and "kidney_cyst_right" not in mapping
    for name, organ in CASES:
        assert mapping.get(name, 0) == organ, name


def test_roi_subset_names_exist_in_installed_class_map():
    names = roi_subset()
    assert len(names) == len(set(names)) == len(organ_mapping())
    assert set(names) <= set(TS.values())
    # class-map order, so TotalSegmentator's own filtering sees what it expects
    ids = [TS_ID[n] for n in names]
    assert ids == sorted(ids)


def test_build_mapping_fails_loudly_on_missing_structure():
    names = [n for n in TS.values() if n != "spleen"]
    with pytest.raises(InputError, match="spleen.*matched 0"):
        build_mapping(names)
    renamed = [("vertebrae_L6" if n == "vertebrae_L5" else n) for n in TS.values()]
    with pytest.raises(InputError, match="matched 24 .*expected 25"):
        build_mapping(renamed)


def test_map_multilabel_on_synthetic_nifti(tmp_path):
    ts, expected = synthetic_ts_labels()
    img = add_label_map_to_nifti(nib.Nifti1Image(ts, np.eye(4)), dict(TS))
    nib.save(img, tmp_path / "ts.nii.gz")
    loaded = nib.load(tmp_path / "ts.nii.gz")
    table = label_table_from_header(loaded)
    assert table == dict(TS)
    organs = map_multilabel(np.asanyarray(loaded.dataobj), table)
    assert organs.dtype == np.uint8
    np.testing.assert_array_equal(organs, expected)
    # float input (get_fdata) gives the same answer
    np.testing.assert_array_equal(map_multilabel(loaded.get_fdata(), table), expected)


def test_map_multilabel_unknown_ids_and_names_are_background():
    ts = np.array([[[TS_ID["liver"], 7, 99, 300]]])
    organs = map_multilabel(ts, {TS_ID["liver"]: "liver", 7: "not_a_structure", 99: "heart"})
    assert organs.tolist() == [[[LIVER, 0, 0, 0]]]
    with pytest.raises(ValueError):
        map_multilabel(np.array([[[-1]]]), {})
    with pytest.raises(ValueError):
        map_multilabel(np.array([[[1.5]]]), {})


def _ct(tmp_path, shape=(8, 8, 8)):
    affine = centered_affine(shape, (4.0, 4.0, 5.0))
    affine[:3, 3] += [1.5, -2.0, 30.0]
    data = np.full(shape, -1000.0, dtype=np.float32)
    data[2:6, 2:6, 2:6] = 40.0
    return write_volume(tmp_path / "ct.nii.gz", data, affine), affine


def _forbid_network(monkeypatch):
    def no_connect(*args, **kwargs):
        raise AssertionError("a network connection was attempted")
    monkeypatch.setattr(socket.socket, "connect", no_connect)
    monkeypatch.setattr(socket, "create_connection", no_connect)


def _forbid_totalsegmentator(monkeypatch):
    import totalsegmentator.python_api as api

    def fail(*args, **kwargs):
        raise AssertionError("TotalSegmentator must not run without weights")
    monkeypatch.setattr(api, "totalsegmentator", fail)


@pytest.mark.parametrize("fast,task", [(True, "total_fast"), (False, "total")])
def test_label_ct_without_weights_is_a_clear_error(tmp_path, monkeypatch, fast, task):
    ct_path, _ = _ct(tmp_path)
    home = tmp_path / "tshome"
    home.mkdir()
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    _forbid_network(monkeypatch)
    _forbid_totalsegmentator(monkeypatch)
    out = tmp_path / "organs.nii.gz"
    with pytest.raises(InputError) as err:
        label_ct(ct_path, out, fast=fast, device="cpu")
    msg = str(err.value)
    assert str(home) in msg and f"totalseg_download_weights -t {task}" in msg
    assert "TOTALSEG_HOME_DIR" in msg and "Dataset298_TotalSegmentator_total_6mm" in msg
    assert not out.exists() and list(home.iterdir()) == []


def _install_fake_weights(home, fast):
    from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS
    for task_id in totalseg.required_weight_tasks(fast):
        fold = (home / "nnunet" / "results" / TASK_ID_WEIGHTS_CONFIGS[task_id]["foldername"]
                / "trainer__plans__3d_fullres" / "fold_0")
        fold.mkdir(parents=True)
        (fold / "checkpoint_final.pth").write_bytes(b"")


def test_incomplete_weights_folder_counts_as_missing(tmp_path, monkeypatch):
    home = tmp_path / "tshome"
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    _install_fake_weights(home, fast=True)
    assert totalseg.missing_weights(True)[1] == []
    next((home / "nnunet/results").glob("Dataset297*/*/fold_0/checkpoint_final.pth")).unlink()
    assert totalseg.missing_weights(True)[1] == ["Dataset297_TotalSegmentator_total_3mm_1559subj"]


def test_label_ct_maps_and_writes_totalsegmentator_output(tmp_path, monkeypatch):
    import totalsegmentator.python_api as api

    ct_path, affine = _ct(tmp_path)
    home = tmp_path / "tshome"
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    _install_fake_weights(home, fast=False)
    _forbid_network(monkeypatch)
    ts, expected = synthetic_ts_labels()
    calls = []
    stats_during_call = []

    real_signature = inspect.signature(api.totalsegmentator)

    def fake_totalsegmentator(input, output=None, **kwargs):
        real_signature.bind(input, output, **kwargs)  # the installed API accepts our call
        calls.append(kwargs)
        stats_during_call.append(api.send_usage_stats)
        np.testing.assert_allclose(input.get_fdata()[3, 3, 3], 40.0)
        # like TotalSegmentator: ids of the "total" class map, table in the header extension
        return add_label_map_to_nifti(nib.Nifti1Image(ts.copy(), input.affine), dict(TS))

    real_stats = api.send_usage_stats
    monkeypatch.setattr(api, "totalsegmentator", fake_totalsegmentator)
    out = tmp_path / "sub" / "organs.nii.gz"
    label_ct(ct_path, out, fast=False, device="cpu")

    (kw,) = calls
    assert kw["ml"] is True and kw["fast"] is False and kw["device"] == "cpu"
    assert kw["roi_subset"] == roi_subset() and kw["task"] == "total"
    assert stats_during_call[0] is not real_stats and api.send_usage_stats is real_stats
    img = nib.load(out)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), expected)
    assert [p.name for p in out.parent.iterdir()] == ["organs.nii.gz"]  # no temporary left


def test_label_ct_rejects_output_on_another_grid(tmp_path, monkeypatch):
    import totalsegmentator.python_api as api

    ct_path, _ = _ct(tmp_path)
    home = tmp_path / "tshome"
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    _install_fake_weights(home, fast=True)
    def wrong_grid(input, output=None, **kwargs):
        return nib.Nifti1Image(np.zeros((8, 8, 7), np.uint8), input.affine)
    monkeypatch.setattr(api, "totalsegmentator", wrong_grid)
    out = tmp_path / "organs.nii.gz"
    with pytest.raises(InputError, match="shape"):
        label_ct(ct_path, out, fast=True, device="cpu")
    assert not out.exists()
    with pytest.raises(InputError, match="device"):
        label_ct(ct_path, out, fast=True, device="tpu")


def test_load_provided_labels(tmp_path):
    affine = centered_affine((4, 4, 4), (2.0, 2.0, 2.0))
    ref = Volume(np.zeros((4, 4, 4), np.float32), affine, "hc.nii.gz")
    good = np.zeros((4, 4, 4), np.uint8)
    good[0, 0, :] = [0, 3, 7, 1]
    path = write_volume(tmp_path / "organs.nii.gz", good, affine, np.uint8)
    np.testing.assert_array_equal(load_provided_labels(path, ref).data, good)

    bad = good.copy()
    bad[1, 1, 1] = 8
    path = write_volume(tmp_path / "bad.nii.gz", bad, affine, np.uint8)
    with pytest.raises(InputError, match=r"bad.nii.gz.*0\.\.7.*\[8\]"):
        load_provided_labels(path, ref)

    path = write_volume(tmp_path / "shifted.nii.gz", good, centered_affine((4, 4, 4), (2.0, 2.0, 2.5)), np.uint8)
    with pytest.raises(InputError, match="shifted.nii.gz: affine differs"):
        load_provided_labels(path, ref)
    assert read_volume(tmp_path / "organs.nii.gz", "labels").data.dtype == np.uint8


def test_totalsegmentator_real_inference_with_constructed_weights(tmp_path):
    """TotalSegmentator and nnU-Net run for real (tests/totalseg_weights.py builds the models):
    resampling to 6 and 3 mm, the roi_subset crop, CT normalisation, sliding-window prediction,
    export, resampling back, and our class mapping, through the CLI the workflow's rule calls."""
    import subprocess
    import sys

    from scipy.ndimage import binary_erosion

    from tests import totalseg_weights

    home = tmp_path / "tshome"
    totalseg_weights.install(home, totalseg.required_weight_tasks(fast=True))
    # a CT on a grid TotalSegmentator must reorient and resample: x flipped, 4 x 4 x 5 mm voxels
    shape = (40, 36, 32)
    affine = np.diag([-4.0, 4.0, 5.0, 1.0])
    affine[:3, 3] = [80.0, -70.0, -75.0]
    ct = np.full(shape, -1000.0, np.float32)                 # air
    regions = {                                              # HU, box (later boxes overwrite)
        "fat": (-100.0, np.s_[2:38, 2:34, 2:30]),
        "lung": (-800.0, np.s_[8:18, 8:28, 8:24]),
        "liver": (60.0, np.s_[22:32, 8:16, 8:24]),
        "bone": (700.0, np.s_[22:32, 20:28, 8:24]),
    }
    for hu, box in regions.values():
        ct[box] = hu
    write_volume(tmp_path / "ct.nii.gz", ct, affine, np.float32)
    # no internet: a sitecustomize in the child refuses IP connections (local sockets stay:
    # nnU-Net's worker processes talk over them)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import socket\n"
        "_connect = socket.socket.connect\n"
        "def _local_only(self, address):\n"
        "    if self.family in (socket.AF_INET, socket.AF_INET6):\n"
        "        raise OSError(f'network disabled by the test: {address}')\n"
        "    return _connect(self, address)\n"
        "socket.socket.connect = _local_only\n")
    env = {**os.environ, "TOTALSEG_HOME_DIR": str(home),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    env.pop("TOTALSEG_WEIGHTS_PATH", None)
    out = tmp_path / "organs.nii.gz"
    run = subprocess.run([sys.executable, "-m", "amdiff", "labels", "--method", "totalsegmentator",
                          "--fast", "--device", "cpu", "--ct", str(tmp_path / "ct.nii.gz"), "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]

    img = nib.load(out)
    assert img.shape == shape and img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)
    organs = np.asanyarray(img.dataobj)
    expected_organ = {"fat": 0, "lung": LUNG, "liver": LIVER, "bone": BONE}
    for region, (hu, _) in regions.items():
        # 2 voxels in from each edge: resampling to 3 and 6 mm and back blurs the boundaries
        inner = binary_erosion(ct == hu, iterations=2)
        assert inner.sum() > 100
        values, counts = np.unique(organs[inner], return_counts=True)
        assert values.tolist() == [expected_organ[region]], f"{region}: {dict(zip(values, counts))}"
        assert totalseg_weights.organ_of(hu) == expected_organ[region]
    assert np.all(organs[:1] == 0) and np.all(organs[:, :, -1:] == 0)   # air
