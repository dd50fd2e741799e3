"""Workflow tests: the tiny config runs end to end; the paper config plans; bad configs stop."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from amdiff.io.nifti import read_volume
from amdiff.levels import parse_level_name
from amdiff.contracts import VARIANTS


def snakemake(repo, workdir, env, *args, timeout=3600):   # a hang guard: ~10 min on an idle 2-core machine
    cmd = ["snakemake", "-s", str(repo / "Snakefile"), "--directory", str(workdir), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(repo, venv_env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny")
    result = snakemake(repo, workdir, venv_env, "--configfile", str(repo / ".test/config/config.yaml"),
                       "--cores", "2")
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


@pytest.mark.slow
def test_tiny_workflow_produces_the_cohort(tiny_run, repo):
    res = tiny_run / "results"
    manifest = pd.read_csv(res / "manifest.tsv", sep="\t")
    assert sorted(manifest.subject) == ["mct001", "mct002", "mct003", "vision001"]
    assert dict(zip(manifest.subject, manifest.split)) == {"mct001": "train", "mct002": "val", "mct003": "test",
                                                           "vision001": "test"}
    for _, row in manifest.iterrows():
        # manifest paths are relative to the manifest's folder
        hc = read_volume(res / row.hc_pet, "suv")
        lesion = read_volume(res / row.lesion, "labels")
        organs = read_volume(res / row.organs, "labels")
        assert hc.data.shape == (48, 48, 64) and np.allclose(hc.affine, lesion.affine)
        assert set(np.unique(organs.data)) <= set(range(8)) and lesion.data.max() == 1
        names = [item.split("=")[0] for item in row.lc_pet.split(";")]
        assert names == {"train": ["p010_r0", "p020_r0"], "val": ["p010_r0"],
                         "test": ["p005_r0", "p040_r0"] if row.site == "mct" else ["p0167_r0"]}[row.split]
        # Noise rises as counts fall: liver CV of the lowest level above the high-count one.
        liver = organs.data == 1
        lowest = read_volume(res / row.lc_pet.split(";")[0].split("=")[1], "suv").data
        cv = lambda img: img[liver].std() / img[liver].mean()
        assert cv(lowest) > 1.5 * cv(hc.data)
        # Mean liver SUV of the high-count image close to the phantom's truth.
        truth = read_volume(res / row.site / row.subject / "truth_suv.nii.gz", "suv").data
        assert hc.data[liver].mean() == pytest.approx(truth[liver].mean(), rel=0.15)
    counts = json.loads((res / "mct" / "mct003" / "listmode" / "counts.json").read_text())
    acq = json.loads((res / "mct" / "mct003" / "listmode" / "acquisition.json").read_text())
    assert sorted(counts["events"]) == ["p005", "p040"]
    for level, n in counts["events"].items():
        assert n == [int(np.floor(parse_level_name(level) / 100 * acq["events"] + 0.5))]
    # models train from their site's train/val subjects only (a broken test image cannot stop them)
    training = pd.read_csv(res / "manifest_mct.tsv", sep="\t")
    assert dict(zip(training.subject, training.split)) == {"mct001": "train", "mct002": "val"}
    summary = pd.read_csv(res / "cohort" / "summary.tsv", sep="\t")
    assert set(summary.site) >= {"mct", "vision"}
    png = (res / "qc" / "mct" / "mct001.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


@pytest.mark.slow
def test_tiny_workflow_trains_every_variant_and_predicts_every_test_image(tiny_run):
    res = tiny_run / "results"
    variants = ["amdiff", "amdiff_no_revision", "amdiff_no_organ_reg", "amdiff_no_lesion_reg", "amdiff_no_lor",
                "amdiff_no_resmamba"]
    for variant in variants:
        log = pd.read_csv(res / "models" / variant / "mct" / "log.csv")
        assert log.epoch.tolist() == [0, 1] and log.lambda_warm[0] == 0 and log.train_seg[1] > 0
        for term in ("lor", "rev"):   # each variant trains with exactly its Eq. 10 terms
            assert (log[f"train_{term}"][1] > 0) == (term in VARIANTS[variant].loss_terms()), (variant, term)
        assert (res / "models" / variant / "mct" / "best.pt").stat().st_size > 10_000
        for site, subject, image in (("mct", "mct003", "p005_r0"), ("mct", "mct003", "p040_r0"),
                                     ("vision", "vision001", "p0167_r0")):
            out = res / "predictions" / variant / site / subject / image
            lc = read_volume(res / site / subject / f"lc_{image}.nii.gz", "suv")
            denoised = read_volume(out / "denoised.nii.gz", "suv")
            lesion = read_volume(out / "lesion.nii.gz", "labels")
            organs = read_volume(out / "organs.nii.gz", "labels")
            for vol in (denoised, lesion, organs):
                assert vol.data.shape == lc.data.shape and np.allclose(vol.affine, lc.affine)
            assert lesion.data.max() <= 1 and organs.data.max() <= 7
            if variant == "amdiff_no_revision":   # P_HC is bounded by the diffusion cutoff
                assert denoised.data.max() <= 20.0 + 1e-3
    assert not (res / "models" / "amdiff" / "uexplorer").exists()


@pytest.mark.slow
def test_tiny_workflow_runs_the_six_comparison_models_through_the_same_harness(tiny_run):
    res = tiny_run / "results"
    images = (("mct", "mct003", "p005_r0"), ("mct", "mct003", "p040_r0"), ("vision", "vision001", "p0167_r0"))
    for model, outputs in (("med_ddpm", ["denoised"]), ("leqmod_gan", ["denoised"]),
                           ("spach_transformer", ["denoised"]), ("swin_unetr", ["lesion", "organs"]),
                           ("nnmamba", ["lesion", "organs"]), ("medsam3d", ["lesion", "organs"])):
        assert (res / "models" / model / "mct" / "best.pt").exists(), model
        for site, subject, image in images:
            lc = read_volume(res / site / subject / f"lc_{image}.nii.gz", "suv")
            out = res / "predictions" / model / site / subject / image
            assert sorted(p.name for p in out.iterdir()) == sorted(f"{o}.nii.gz" for o in outputs), model
            for name in outputs:
                vol = read_volume(out / f"{name}.nii.gz", "suv" if name == "denoised" else "labels")
                assert vol.data.shape == lc.data.shape and np.allclose(vol.affine, lc.affine)


@pytest.mark.slow
def test_tiny_workflow_evaluates_every_model_and_writes_tables_figures_and_report(tiny_run, repo, venv_env):
    from amdiff.evaluate.columns import COLUMNS

    metrics = pd.read_csv(tiny_run / "results/metrics/metrics.tsv", sep="\t")
    assert list(metrics.columns) == list(COLUMNS)
    # 14 models (12 trained, 2 training-free) x 3 test images (mct003 p005, p040; vision001 p0167)
    assert len(metrics) == 42 and metrics.groupby("model").size().eq(3).all()
    by_model = metrics.set_index("model")
    for model in ("amdiff", "amdiff_no_resmamba"):
        assert by_model.loc[model, ["nrmse_liver", "dice_liver", "tlg_true"]].notna().all().all()
    assert by_model.loc["med_ddpm", "nrmse_liver"].notna().all() and by_model.loc["med_ddpm", "dice_liver"].isna().all()
    assert by_model.loc["nnmamba", "dice_liver"].notna().all() and by_model.loc["nnmamba", "nrmse_liver"].isna().all()
    # the ground truth does not depend on the model
    assert metrics.groupby(["site", "subject", "level"]).mtv_true_ml.nunique().eq(1).all()

    tables = tiny_run / "reports" / "tables"
    table2 = (tables / "table2_denoising.md").read_text()
    for name in ("LeqMod-GAN", "SpachTransformer", "3D Med-DDPM", "AMDiff", "mCT", "Vision", "All"):
        assert name in table2
    # the training-free rows open every group; the Gaussian's label names the FWHM it was fit to
    fwhm = json.loads((tiny_run / "results/models/gaussian_filter/mct/fit.json").read_text())["fwhm_mm"]
    assert fwhm in (0, 12, 24, 36) and f"|  | Gaussian filter (FWHM {fwhm:g} mm) |" in table2
    assert "| mCT | Low-count input |" in table2 and "| Vision | Low-count input |" in table2
    lc = read_volume(tiny_run / "results/mct/mct003/lc_p005_r0.nii.gz", "suv").data
    copy = read_volume(tiny_run / "results/predictions/lowcount_input/mct/mct003/p005_r0/denoised.nii.gz", "suv")
    assert np.array_equal(copy.data, lc)
    assert "**" in table2 and (tables / "table4_ablation.tex").read_text().count("\\textbf") >= 17
    # the whole-L_lor ablation is a Table 4 row, with no paper number beside it
    assert "| w/o lesion-organ regularizer |" in (tables / "table4_ablation.md").read_text()
    versus = pd.read_csv(tables / "paper_vs_reproduction.tsv", sep="\t")
    no_lor = versus[versus.model == "amdiff_no_lor"]
    assert len(no_lor) == 17 and no_lor.paper_mean.isna().all()
    assert no_lor.set_index("metric").at["nrmse_whole", "n"] == 3
    long = pd.read_csv(tables / "table3_segmentation.tsv", sep="\t")
    assert set(long.model) == {"swin_unetr", "nnmamba", "medsam3d", "amdiff"}
    claims = pd.read_csv(tables / "claims.tsv", sep="\t", keep_default_na=False)
    assert set(claims.reproduced) <= {"yes", "no", "n/a"} and len(claims) >= 20
    figures = tiny_run / "reports" / "figures"
    for name in ("fig7_regression", "training_curves", "fig4_denoising_mct", "fig5_lesions_vision",
                 "fig6_organs_mct"):
        assert (figures / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (figures / f"{name}.pdf").read_bytes()[:4] == b"%PDF"

    report = tiny_run / "report.html"
    result = snakemake(repo, tiny_run, venv_env, "--configfile", str(repo / ".test/config/config.yaml"),
                       "--report", str(report), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert report.stat().st_size > 100_000


@pytest.mark.slow
def test_rerun_has_nothing_to_do(tiny_run, repo, venv_env):
    result = snakemake(repo, tiny_run, venv_env, "--configfile", str(repo / ".test/config/config.yaml"),
                       "-n", "--cores", "1")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def _planned_jobs(out: str) -> dict:
    """{rule: jobs} from the job table of `snakemake -n --quiet rules`."""
    table = out.split("Job stats:", 1)[1]
    return {parts[0]: int(parts[1]) for parts in (line.split() for line in table.splitlines())
            if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total"}


@pytest.mark.slow
@pytest.mark.parametrize("override, reruns, spared", [
    # inference settings: the trained models' predictions and what follows, not the training
    ("inference={steps: 3}", {"predict_amdiff", "predict_denoiser_baseline", "predict_segmenter_baseline"},
     {"train_diffusion", "recon_lowcount", "phantom", "predict_gaussian_filter"}),
    # one site's reconstruction: that site's images and what follows, no training (it trains on mct)
    ("sites={vision: {recon: {postfilter_fwhm_mm: 3.0}}}", {"recon_highcount", "recon_lowcount", "predict_amdiff"},
     {"train_diffusion", "train_baseline", "phantom", "simulate_listmode"}),
    # the training budget: every trained model, not the data
    ("training={epochs: 3}", {"train_diffusion", "train_baseline", "predict_amdiff"},
     {"phantom", "recon_lowcount", "fit_gaussian_filter", "predict_lowcount_input"}),
])
def test_a_changed_setting_reruns_the_jobs_that_use_it(tiny_run, repo, venv_env, tmp_path, override,
                                                      reruns, spared):
    """Each job reads its config scope's file (rule job_config writes it again when the scope's
    settings change): a changed key re-runs the jobs that use it and spares the others."""
    key, value = override.split("=", 1)
    changed = tmp_path / "changed.yaml"   # merged over the tiny config (--config would pass strings)
    changed.write_text(f"{key}: {value}\n")
    result = snakemake(repo, tiny_run, venv_env, "--configfile", str(repo / ".test/config/config.yaml"),
                       str(changed), "-n", "--quiet", "rules", timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    planned = _planned_jobs(out)
    assert reruns <= set(planned), (override, planned)
    assert not spared & set(planned), (override, planned)
    if override.startswith("sites="):   # mct's images are not reconstructed again
        assert planned["recon_highcount"] == 1
    assert planned["job_config"] >= 1


@pytest.mark.slow
def test_crashed_run_resumed_with_rerun_incomplete_gives_identical_metrics(tiny_run, repo, venv_env, tmp_path):
    """A second run from scratch, killed (snakemake and its jobs) while models train, then
    unlocked and resumed with --rerun-incomplete, ends with the same metrics table, byte for
    byte, as the uninterrupted first run: interruption-safe and reproducible on one machine."""
    import os
    import signal
    import time

    work = tmp_path / "crash"
    cmd = ["snakemake", "-s", str(repo / "Snakefile"), "--directory", str(work),
           "--configfile", str(repo / ".test/config/config.yaml"), "--cores", "2"]
    proc = subprocess.Popen(cmd, env=venv_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 1200
    try:
        # a training job has written its first epoch and is still running
        while not list((work / "results" / "models").glob("*/mct/last.pt")):
            assert proc.poll() is None and time.monotonic() < deadline, "run ended before training"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (work / "results" / "metrics" / "metrics.tsv").exists()
    assert snakemake(repo, work, venv_env, "--configfile", str(repo / ".test/config/config.yaml"),
                     "--unlock").returncode == 0
    result = snakemake(repo, work, venv_env, "--configfile", str(repo / ".test/config/config.yaml"),
                       "--cores", "2", "--rerun-incomplete")
    assert result.returncode == 0, result.stderr[-3000:]
    first = (tiny_run / "results" / "metrics" / "metrics.tsv").read_bytes()
    assert (work / "results" / "metrics" / "metrics.tsv").read_bytes() == first
    assert (work / "reports" / "tables" / "table4_ablation.tsv").read_bytes() == \
        (tiny_run / "reports" / "tables" / "table4_ablation.tsv").read_bytes()


@pytest.mark.slow
def test_corrupt_input_fails_only_its_own_jobs_with_keep_going(tiny_run, repo, venv_env, tmp_path):
    work = tmp_path / "keep_going"
    shutil.copytree(tiny_run, work, symlinks=True, ignore=shutil.ignore_patterns("report.html"))
    res = work / "results"
    # branch 1 must be redone: AMDiff's predictions and metrics of mct003
    shutil.rmtree(res / "predictions" / "amdiff" / "mct" / "mct003")
    (res / "metrics" / "cases" / "amdiff" / "mct" / "mct003.tsv").unlink()
    # branch 2 breaks: vision001's low-count image is truncated on disk
    bad = res / "vision" / "vision001" / "lc_p0167_r0.nii.gz"
    bad.write_bytes(bad.read_bytes()[:2000])
    result = snakemake(repo, work, venv_env, "--configfile", str(repo / ".test/config/config.yaml"),
                       "--cores", "2", "--keep-going")
    assert result.returncode != 0
    # the healthy branch finished
    metrics = pd.read_csv(res / "metrics" / "cases" / "amdiff" / "mct" / "mct003.tsv", sep="\t")
    assert len(metrics) == 2 and metrics.nrmse_liver.notna().all()
    # the broken one failed with one clear line naming the file, and left no outputs behind
    log = (work / "logs" / "predict" / "amdiff" / "vision" / "vision001.log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("amdiff: error:")]
    assert errors == [errors[0]] and str(bad.relative_to(work)) in errors[0] and "not a readable NIfTI" in errors[0]
    assert "Traceback" not in log
    out = res / "predictions" / "amdiff" / "vision" / "vision001"
    assert not out.exists()   # the job's folder output is removed
    # nothing downstream of the failure was rebuilt from partial inputs
    assert (res / "metrics" / "metrics.tsv").read_bytes() == (tiny_run / "results/metrics/metrics.tsv").read_bytes()


def test_paper_config_plans_the_full_study(repo, venv_env, tmp_path):
    result = snakemake(repo, tmp_path, venv_env, "--configfile", str(repo / "config/paper.yaml"),
                       "-n", "--quiet", "rules", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    # 244 subjects: one phantom, one simulation, one down-sampling and one HC recon each
    for rule in ("phantom", "simulate_listmode", "downsample", "recon_highcount"):
        assert any(line.split()[:2] == [rule, "244"] for line in out.splitlines()), out[-2000:]
    # low-count recons: mct 195x3 + 29x2, vision 10x1, uexplorer 10x3
    assert any(line.split()[:2] == ["recon_lowcount", str(195 * 3 + 29 * 2 + 10 + 10 * 3)] for line in out.splitlines())
    # AMDiff and its 5 ablations + Med-DDPM, and the five other comparison models, per training site;
    # predictions of every test image: mct 29x2 + vision 10x1 (mct models) + uexplorer 5x3
    assert any(line.split()[:2] == ["train_diffusion", "14"] for line in out.splitlines())
    assert any(line.split()[:2] == ["train_baseline", "10"] for line in out.splitlines())
    subjects = 29 + 10 + 5
    # the training-free rows: one FWHM fit per training site, both "models" on every test image;
    # a model predicts all test images of a subject in one job
    assert any(line.split()[:2] == ["fit_gaussian_filter", "2"] for line in out.splitlines())
    for rule, models in (("predict_amdiff", 6), ("predict_denoiser_baseline", 3), ("predict_segmenter_baseline", 3),
                         ("predict_lowcount_input", 1), ("predict_gaussian_filter", 1)):
        assert any(line.split()[:2] == [rule, str(models * subjects)] for line in out.splitlines()), rule


def _venv_at_an_odd_path(root: Path) -> str:
    """This venv's interpreter seen from a folder whose name a shell must quote (space, braces,
    quote): a symlinked bin/python, lib and pyvenv.cfg. The interpreter itself where this runs
    outside a venv."""
    venv = Path(sys.prefix)
    if not (venv / "pyvenv.cfg").is_file():
        return sys.executable
    odd = root / "a venv {here}'s"
    (odd / "bin").mkdir(parents=True)
    (odd / "bin" / "python").symlink_to(sys.executable)
    (odd / "lib").symlink_to(venv / "lib")
    shutil.copy(venv / "pyvenv.cfg", odd / "pyvenv.cfg")
    return str(odd / "bin" / "python")


def test_jobs_find_the_package_when_the_environment_is_not_activated(repo, tmp_path):
    """`.venv/bin/snakemake` without activating the venv: no `amdiff` on PATH, yet the jobs run,
    because the rules call the package through the interpreter that runs Snakemake, also where
    that interpreter's path needs quoting."""
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(PATH="/usr/bin:/bin", OMP_NUM_THREADS="1")
    assert shutil.which("amdiff", path=env["PATH"]) is None
    python = _venv_at_an_odd_path(tmp_path / "env")
    target = "results/mct/mct001/phantom.json"
    result = subprocess.run([python, "-m", "snakemake", "-s", str(repo / "Snakefile"),
                             "--directory", str(tmp_path / "run"), "--configfile", str(repo / ".test/config/config.yaml"),
                             "--cores", "1", target], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "run" / target).read_text())
    assert "Shell command: amdiff phantom" in result.stdout + result.stderr


def test_bad_config_key_stops_with_one_line(repo, venv_env, tmp_path):
    bad = tmp_path / "bad.yaml"
    shutil.copy(repo / ".test/config/config.yaml", bad)
    bad.write_text(bad.read_text().replace("iterations:", "iteratons:", 1))
    result = snakemake(repo, tmp_path, venv_env, "--configfile", str(bad), "-n")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "config error" in line]
    assert lines == [f"config error: {bad}: sites.mct.recon: unknown key 'iteratons'"] or \
        any("unknown key 'iteratons'" in line for line in lines), result.stderr[-2000:]
    assert not (tmp_path / "results" / "mct").exists()


@pytest.mark.slow
def test_own_data_from_an_autopet_folder_runs_through_the_same_path(tiny_run, repo, venv_env, tmp_path):
    """autoPET-style studies (SUV, CTres, SEG) become a manifest and go through simulated
    list-mode, down-sampling and reconstruction like the synthetic cohort."""
    import yaml

    data = tmp_path / "autopet"
    for i, (site, subject) in enumerate([("mct", "mct001"), ("mct", "mct002")]):
        study = data / f"PETCT_{i}" / "study_a"
        study.mkdir(parents=True)
        src = tiny_run / "results" / site / subject
        for ours, theirs in (("truth_suv", "SUV"), ("ct", "CTres"), ("lesion", "SEG")):
            shutil.copy(src / f"{ours}.nii.gz", study / f"{theirs}.nii.gz")
    manifest = tmp_path / "cohort.tsv"
    result = subprocess.run(["amdiff", "import-autopet", str(data), "--out", str(manifest), "--seed", "1"],
                            env=venv_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = pd.read_csv(manifest, sep="\t")
    assert len(rows) == 2 and rows.simulate_from_images.tolist() == [True, True]
    rows["split"] = ["train", "test"]
    rows.to_csv(manifest, sep="\t", index=False)

    config = yaml.safe_load((repo / ".test/config/config.yaml").read_text())
    config["cohort"] = {"source": "manifest", "manifest": str(manifest), "data_roots": [str(tmp_path)]}
    for section in ("models", "training", "diffusion", "inference"):   # data stages only
        config.pop(section)
    config["labels"]["method"] = "totalsegmentator"
    site = config["sites"].pop("mct")
    site["count_levels"] = {"train": [10], "test": [5]}
    site["split"] = {"train": 1, "val": 0, "test": 1}
    config["sites"] = {"autopet": site}
    cfg = tmp_path / "own.yaml"
    cfg.write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    # Without TotalSegmentator weights only the labels (and what needs them) fail: --keep-going
    env = dict(venv_env, TOTALSEG_HOME_DIR=str(tmp_path / "no_weights"))
    result = snakemake(repo, work, env, "--configfile", str(cfg), "--cores", "2", "--keep-going")
    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert "totalseg_download_weights" in (work / "logs/labels/autopet").joinpath(
        sorted(p.name for p in (work / "logs/labels/autopet").iterdir())[0]).read_text()
    res = work / "results" / "autopet"
    made = sorted(p.relative_to(res).as_posix() for p in res.glob("*/*.nii.gz"))
    split = dict(zip(rows.subject, rows.split))
    train = next(s for s, sp in split.items() if sp == "train")
    test = next(s for s, sp in split.items() if sp == "test")
    assert f"{train}/hc.nii.gz" in made and f"{train}/lc_p010_r0.nii.gz" in made
    assert f"{test}/lc_p005_r0.nii.gz" in made and f"{test}/mumap.nii.gz" in made
    assert not any(name.endswith("organs.nii.gz") for name in made), log[-2000:]
    # the reconstruction of the list simulated from the study's SUV matches it in the liver
    source = {"PETCT_0": "mct001", "PETCT_1": "mct002"}[test.split("_study")[0]]
    liver = read_volume(tiny_run / "results/mct" / source / "organs_truth.nii.gz", "labels").data == 1
    hc = read_volume(res / test / "hc.nii.gz", "suv").data
    suv = read_volume(tiny_run / "results/mct" / source / "truth_suv.nii.gz", "suv").data
    assert hc[liver].mean() == pytest.approx(suv[liver].mean(), rel=0.15)
