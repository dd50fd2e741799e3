"""Config files as YAML (duplicate keys, syntax errors with their line), the bounds a config
must keep (patch sides the networks can halve, image sizes, acquisition times and doses), and a
dry run of the workflow that writes nothing."""

import copy
import shutil
import subprocess

import pytest

from amdiff.config import MAX_VOXELS, load_config, patch_divisors, read_config, validate_config
from amdiff.errors import InputError
from tests.test_config import assert_one_line_config_error


@pytest.fixture(scope="module")
def demo(repo):
    return load_config(repo / "config" / "config.yaml")


def _error(path) -> str:
    with pytest.raises(InputError) as info:
        read_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


# ---- YAML ----------------------------------------------------------------------------------
def test_a_duplicate_key_is_refused_with_its_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("seed: 1\nresults_dir: results\nseed: 2\n")
    assert _error(path) == (f"{path}: line 3: duplicate key 'seed' (first given at line 1; "
                            "YAML would keep the last value silently)")


def test_a_nested_duplicate_key_is_named_by_its_path(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("sites:\n  mct:\n    recon:\n      iterations: 2\n      subsets: 21\n"
                    "      iterations: 4\n  vision: {recon: {iterations: 2}}\n")
    message = _error(path)
    assert "line 6: duplicate key 'sites.mct.recon.iterations' (first given at line 4" in message
    path.write_text("a:\n  - {k: 1, k: 2}\n")
    assert "line 2: duplicate key 'a.0.k'" in _error(path)


def test_a_duplicate_in_the_demo_config_is_refused_by_load_config(repo, tmp_path):
    text = (repo / "config" / "config.yaml").read_text()
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("seed:"))
    lines.insert(at + 1, "seed: 1")
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=rf"line {at + 2}: duplicate key 'seed' \(first given at line {at + 1}"):
        load_config(path)


def test_merge_keys_and_equal_keys_in_other_mappings_are_fine(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\nthird: {x: 4}\n")
    assert read_config(path) == {"base": {"x": 1, "y": 2}, "other": {"x": 3, "y": 2}, "third": {"x": 4}}


@pytest.mark.parametrize("text, where, problem", [
    ("seed: 1\nresults_dir: [a,\n", "line 3, column 1", "expected the node content"),
    ("seed: 1\nlabels:\n  method: phantom\n method: x\n", "line 4, column 2", "expected <block end>"),
    ("seed: 1\nlabels:\n\tmethod: phantom\n", "line 3, column 1", "found character '\\t'"),
    ("seed: 1\nseed2: 'open\n", "line 3, column 1", "found unexpected end of stream"),
])
def test_a_syntax_error_names_the_file_and_line(tmp_path, text, where, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    message = _error(path)
    assert message.startswith(f"{path}: {where}: not valid YAML: "), message
    assert problem in message


def test_unreadable_bytes_are_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("seed: 1\nname: caf\xe9\n".encode("latin-1"))
    assert "not UTF-8 text" in _error(path)


# ---- bounds --------------------------------------------------------------------------------
def _windows(sides, drop=()):
    """A mutation: training and inference windows ``sides``, after removing the ``drop`` sections."""
    def mutate(c):
        for section in drop:
            c.pop(section)
        c["training"]["patch_size"] = list(sides)
        c["inference"]["patch_size"] = list(sides)
    return mutate


@pytest.mark.parametrize("mutate, expected", [
    # Swin-UNETR halves 5 times, LeqMod-GAN and nnMamba 4 times
    (_windows([40, 40, 40]), "training.patch_size: sides [40, 40, 40] must be multiples of 32 for the "
                             "configured models (leqmod_gan, nnmamba: 16; swin_unetr: 32)"),
    (_windows([32, 32, 20]), "training.patch_size: sides [32, 32, 20] must be multiples of 32"),
    (lambda c: c["inference"].update(patch_size=[20, 20, 20]) or c.pop("training"),
     "inference.patch_size: sides [20, 20, 20] must be multiples of 32"),
    # only the models configured count: without the baselines, AMDiff's 8 remains
    (_windows([20, 20, 20], drop=["baselines"]),
     "training.patch_size: sides [20, 20, 20] must be multiples of 8 for the configured models "
     "(amdiff, amdiff_no_revision, amdiff_no_organ_reg, amdiff_no_lesion_reg, amdiff_no_lor, amdiff_no_resmamba: 8)"),
    # overrides change a baseline's depth
    (lambda c: c["baselines"].update(names=["leqmod_gan"], overrides={"leqmod_gan": {"enc_channels": [4, 8, 8, 8, 16]}})
     or c["models"].update(variants=[]) or _windows([48, 48, 48])(c),
     "training.patch_size: sides [48, 48, 48] must be multiples of 32 for the configured models (leqmod_gan: 32)"),
    (lambda c: c["baselines"].update(names=["medsam3d"], size="paper") or c["models"].update(variants=[])
     or _windows([24, 24, 24])(c), "(medsam3d: 16)"),
    # image size
    (lambda c: c["sites"]["mct"]["image"].update(shape=[4097, 72, 112]),
     "sites.mct.image.shape.0: 4097 is greater than the maximum of 4096"),
    (lambda c: c["sites"]["mct"]["image"].update(shape=[4096, 4096, 120]),
     "sites.mct.image.shape: [4096, 4096, 120] is 2.01e+09 voxels, above the limit of 2e+09 (8 GB per float32 image)"),
    # acquisition: a time in ms, a dose in kBq
    (lambda c: c["sites"]["mct"]["acquisition"].update(duration_s=300_000),
     "sites.mct.acquisition.duration_s: 300000 is greater than the maximum of 100000"),
    (lambda c: c["sites"]["mct"].update(acquisition_by_split={"test": {"duration_s": 1.8e6}}),
     "sites.mct.acquisition_by_split.test.duration_s: 1800000.0 is greater than the maximum of 100000"),
    (lambda c: c["sites"]["vision"]["acquisition"].update(dose_mbq=[332100, 28.0]),
     "sites.vision.acquisition.dose_mbq.0: 332100 is greater than the maximum of 10000"),
    (lambda c: c["sites"]["mct"].update(acquisition_by_split={"test": {"dose_mbq": [334.5, 32100]}}),
     "sites.mct.acquisition_by_split.test.dose_mbq.1: 32100 is greater than the maximum of 10000"),
])
def test_values_the_networks_or_memory_cannot_take_give_one_line(demo, mutate, expected):
    assert_one_line_config_error(demo, mutate, expected)


@pytest.mark.parametrize("mutate", [
    _windows([64, 64, 96]),                                                     # multiples of 32
    _windows([24, 40, 16], drop=["baselines"]),                                 # AMDiff alone: 8
    lambda c: c["baselines"].update(names=["med_ddpm", "spach_transformer"]) or _windows([24, 24, 24])(c),
    lambda c: c["sites"]["mct"]["image"].update(shape=[1024, 1024, 1024]),      # 1.07e9 voxels
    lambda c: c["sites"]["mct"]["acquisition"].update(duration_s=100_000, dose_mbq=[10_000, 0]),
])
def test_values_within_the_bounds_pass(demo, mutate):
    good = copy.deepcopy(demo)
    mutate(good)
    if good["sites"]["mct"]["image"]["shape"][2] > 112:   # keep the image inside the scanner's axial FOV
        good["sites"]["mct"]["scanner"]["n_rings"] = good["sites"]["mct"]["image"]["shape"][2]
    validate_config(good, "my.yaml")


def test_shipped_configs_keep_the_bounds(repo):
    for name in ("config.yaml", "paper.yaml", "study.yaml"):
        load_config(repo / "config" / name)
    load_config(repo / ".test" / "config" / "config.yaml")
    assert MAX_VOXELS == 2_000_000_000


def test_patch_divisors_are_the_models_own(demo):
    """config.py repeats each network's divisor (validation must not import torch): compare."""
    from amdiff.models import segmenter
    from amdiff.models.baselines import get
    from amdiff.models.denoiser import DenoiserUNet

    denoiser = demo["models"]["denoiser"]
    amdiff_multiple = DenoiserUNet(channels=denoiser["channels"], num_res_blocks=1,
                                   attention_heads_channels=denoiser["attention_heads_channels"],
                                   norm_groups=denoiser["norm_groups"]).size_multiple
    expected = {v: max(amdiff_multiple, 2 ** segmenter.N_LEVELS) for v in demo["models"]["variants"]}
    for size in ("demo", "paper"):
        def own(module):
            return getattr(get(module), size.upper())
        med_ddpm = DenoiserUNet(**own("med_ddpm")["denoiser"]).size_multiple
        leqmod = 2 ** len(own("leqmod_gan")["enc_channels"])
        if size == "demo":
            gan = get("leqmod_gan").build(**own("leqmod_gan"))
            assert 2 ** gan.generator.levels == leqmod
        config = copy.deepcopy(demo)
        config["baselines"].update(size=size, overrides={})
        assert patch_divisors(config) == {
            **expected, "med_ddpm": med_ddpm, "leqmod_gan": leqmod,
            "spach_transformer": get("spach_transformer").SIDE_MULTIPLE, "swin_unetr": get("swin_unetr").DIVISOR,
            "nnmamba": get("nnmamba").DIVISOR, "medsam3d": own("medsam3d")["patch_size"]}


# ---- the workflow --------------------------------------------------------------------------
def _snakemake(repo, workdir, env, *args):
    cmd = [shutil.which("snakemake", path=env["PATH"]), "-s", str(repo / "Snakefile"),
           "--directory", str(workdir), "--nolock", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_a_dry_run_writes_nothing(repo, venv_env, tmp_path):
    """Not even the config files the jobs read (results/config/<scope>.yaml): rule job_config
    writes them when jobs run."""
    work, results = tmp_path / "work", tmp_path / "elsewhere" / "results"
    work.mkdir()
    result = _snakemake(repo, work, venv_env, "-n", "--quiet", "rules", "--config", f"results_dir={results}")
    assert result.returncode == 0, result.stderr[-3000:]
    # the whole study is planned, the provenance job too (the config file is no input of it)
    assert any(line.split()[:2] == ["provenance", "1"] for line in (result.stdout + result.stderr).splitlines())
    assert not results.parent.exists()
    assert sorted(p.name for p in work.iterdir()) == [".snakemake"]   # Snakemake's own folder only


def test_snakemake_refuses_a_duplicate_key_in_a_configfile(repo, venv_env, tmp_path):
    text = (repo / ".test" / "config" / "config.yaml").read_text()
    assert "\nseed: " in text
    bad = tmp_path / "dup.yaml"
    bad.write_text(text.replace("\nseed: ", "\nseed: 1\nseed: ", 1))
    line = text[:text.index("\nseed: ")].count("\n") + 2    # the first "seed:" line
    result = _snakemake(repo, tmp_path, venv_env, "-n", "--configfile", str(bad))
    assert result.returncode != 0
    errors = [e for e in result.stderr.splitlines() if "config error" in e]
    assert errors == [f"config error: {bad}: line {line + 1}: duplicate key 'seed' (first given at line {line}; "
                      "YAML would keep the last value silently)"], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert {p.name for p in tmp_path.iterdir()} <= {".snakemake", "dup.yaml"}   # no results/, no logs/
