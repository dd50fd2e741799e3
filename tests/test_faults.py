"""Faults during training: a job killed mid-epoch resumes, a damaged checkpoint stops with one line.

The killed job is a real ``amdiff train`` process started with the command line of the Snakemake
rule ``train_diffusion`` (read from rules/train.smk) and killed with SIGKILL, as a cluster scheduler
or the OOM killer would. Before re-running a job Snakemake deletes its declared outputs (best.pt,
log.csv; ``Job.remove_existing_output``), and after a failed job it deletes them too; only the
undeclared resume state (last.pt, resume_best.pt) survives. The tests do the same.
"""

import copy
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import tests.test_train as tt
from amdiff.config import patch_divisors
from amdiff.train.checkpoint import load_checkpoint
from amdiff.train.trainer import Trainer
from tests.test_train import manifest  # noqa: F401  (module fixture: a 3-subject cohort)

REPO = Path(__file__).resolve().parent.parent
DECLARED = ("best.pt", "log.csv", "progress.png")                     # outputs of rule train_diffusion
RESUME_STATE = ("last.pt", "resume_best.pt")          # undeclared: survive a Snakemake re-run
EPOCHS = tt.CONFIG["training"]["epochs"]
# more patches per epoch than test_train (4) so that an epoch lasts seconds and a kill lands in one
PATCHES_PER_EPOCH = 32


def rule_argv(rule: str, **values) -> list[str]:
    """The shell command of ``rule`` in rules/train.smk with its placeholders filled, as argv.

    The redirection ``> {log:q} 2>&1`` is left to the caller (which captures the output itself);
    a placeholder's ``:q`` (Snakemake's shell quoting) is applied as ``shlex.quote`` per item.
    """
    text = (REPO / "rules" / "train.smk").read_text()
    block = text.split(f"rule {rule}:", 1)[1]
    shell = block.split("shell:", 1)[1].split("\n\n", 1)[0]
    command = "".join(re.findall(r'"([^"]*)"', shell))
    command, redirect = re.split(r" > \{log(?::q)?\}", command, maxsplit=1)
    assert redirect.strip() == "2>&1", command
    values.setdefault("AMDIFF", "amdiff")   # the rules call `<python> -m amdiff`; the tests, the script
    return shlex.split(re.sub(r"\{([^}:]+)(?::q)?\}", lambda m: _quoted(values[m.group(1)]), command))


def _quoted(value) -> str:
    """Snakemake's `:q`: a list becomes its items, each quoted; anything else one quoted word."""
    if isinstance(value, (list, tuple)):
        return " ".join(shlex.quote(str(v)) for v in value)
    return shlex.quote(str(value))


def epochs_logged(out: Path) -> int:
    """Data rows of log.csv (written atomically, so a read never sees half a file)."""
    try:
        return len((out / "log.csv").read_text().splitlines()) - 1
    except FileNotFoundError:
        return 0


def leftovers(out: Path) -> list[str]:
    """Files in the output folder other than the declared outputs and the resume state."""
    return sorted(p.name for p in out.iterdir() if p.name not in DECLARED + RESUME_STATE)


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Job:
    """One `amdiff train` run as the rule runs it (output to a log file, own process group)."""

    def __init__(self, argv: list[str], out: Path, env: dict):
        self.out = out
        self.log = out.parent / f"{out.name}.{time.monotonic_ns()}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=out.parent, start_new_session=True)

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"amdiff train ran over {timeout} s:\n{self.output()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)   # the group holds only this job's process
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture(scope="module")
def train_env(venv_env):
    return {**venv_env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def job(manifest, tmp_path_factory, train_env):  # noqa: F811
    """Start `amdiff train` on a workflow config (config/config.yaml + test_train's tiny model)."""
    root = tmp_path_factory.mktemp("faults")
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["results_dir"] = str(root / "results")      # never the repository's results/
    cfg["seed"] = tt.CONFIG["seed"]
    cfg["models"], cfg["diffusion"] = copy.deepcopy(tt.CONFIG["models"]), copy.deepcopy(tt.CONFIG["diffusion"])
    cfg["training"] = {**copy.deepcopy(tt.CONFIG["training"]), "patches_per_epoch": PATCHES_PER_EPOCH,
                       "threads": 1}
    cfg["inference"]["patch_size"] = cfg["training"]["patch_size"]   # windows = training patches
    # the tiny 16^3 patches fit every configured model but Swin-UNETR (32): leave it out
    fits = patch_divisors(cfg)
    cfg["baselines"]["names"] = [n for n in cfg["baselines"]["names"] if 16 % fits.get(n, 1) == 0]
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def start(out: Path) -> Job:
        argv = rule_argv("train_diffusion", **{
            "input.config": config, "input.manifest": manifest, "wildcards.train_site": "mct", "wildcards.model": "amdiff",
            "params.outdir": out, "threads": 1})
        return Job(argv, out, train_env)
    return start


@pytest.fixture(scope="module")
def reference(job, tmp_path_factory):
    """An uninterrupted run, started now and running alongside the test that first uses it."""
    run = job(tmp_path_factory.mktemp("reference") / "out")
    done = {}

    def finished() -> Path:
        if not done:
            assert run.wait() == 0, run.output()
            assert epochs_logged(run.out) == EPOCHS, run.output()
            done["out"] = run.out
        return done["out"]
    yield finished
    run.kill()


def test_job_killed_mid_epoch_resumes_from_last_checkpoint(job, reference, tmp_path):
    out = tmp_path / "out"
    first = job(out)
    # ---- kill it while it trains the second epoch ----------------------------------------
    deadline = time.monotonic() + 90
    while epochs_logged(out) < 1:
        assert first.proc.poll() is None, f"amdiff train ended before its first epoch:\n{first.output()}"
        assert time.monotonic() < deadline, f"no first epoch after 90 s:\n{first.output()}"
        time.sleep(0.01)
    at_kill = pd.read_csv(out / "log.csv")
    # epoch 1 trains the segmenter too and lasts ~3x epoch 0: half of epoch 0 is well inside it
    time.sleep(max(0.1, 0.5 * float(at_kill.seconds[0])))
    assert first.proc.poll() is None, "the job finished before it could be killed"
    assert epochs_logged(out) == 1, "the second epoch ended before the kill: make epochs longer"
    first.kill()
    assert first.proc.returncode == -signal.SIGKILL
    # killed mid-epoch: the first epoch's checkpoint and log row, nothing of the second
    at_kill = pd.read_csv(out / "log.csv")
    assert at_kill.epoch.tolist() == [0], "the second epoch ended just before the kill"
    assert load_checkpoint(out / "last.pt")["epoch"] == 0
    # a kill while a checkpoint is being written leaves atomic_path's temporary behind; add one
    # (half a checkpoint under that name) so the re-run must also clean up after such a kill
    (out / ".last.pt.x1y2z3.tmp.pt").write_bytes((out / "last.pt").read_bytes()[:100_000])
    # ---- re-run as Snakemake would: declared outputs removed first, then the same command -
    for name in DECLARED:
        (out / name).unlink()
    second = job(out)
    assert second.wait() == 0, second.output()
    # it resumed: epoch 0 was not trained again (its log row, wall time included, is the one
    # the killed run wrote) and the progress lines (amdiff.joblog) count on from epoch 1: the
    # first one the re-run writes is at 2 of 3 epochs, none at 1
    log = pd.read_csv(out / "log.csv")
    pd.testing.assert_series_equal(log.iloc[0], at_kill.iloc[0])
    assert f"(2/{EPOCHS} epoch)" in second.output() and f"(1/{EPOCHS} epoch)" not in second.output()
    assert leftovers(out) == [], "temporary or partial files remain"
    for name in DECLARED + RESUME_STATE:
        if name.endswith(".pt"):
            load_checkpoint(out / name)   # complete, readable checkpoints
    # ---- and ends where the uninterrupted run ends -------------------------------------------
    ref = reference()
    pd.testing.assert_frame_equal(log.drop(columns=["seconds"]),
                                  pd.read_csv(ref / "log.csv").drop(columns=["seconds"]))
    assert same_weights(out / "last.pt", ref / "last.pt")
    assert same_weights(out / "best.pt", ref / "best.pt")
    assert load_checkpoint(out / "best.pt")["epoch"] == load_checkpoint(ref / "best.pt")["epoch"]


def test_truncated_checkpoint_stops_the_job_with_one_line(job, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference(), out)
    last = out / "last.pt"
    # a crash during a user's non-atomic copy (cp, rsync --inplace) leaves the file's first half
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    run = job(out)
    assert run.wait() == 2, run.output()
    lines = run.output().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"amdiff: error: {last}: "), run.output()
    assert "delete it to train from scratch" in lines[0]
    assert "Traceback" not in run.output()
    # nothing restarted from scratch: the folder is exactly as it was
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


class LaterEpochsWorse(Trainer):
    """Validation gets worse every epoch, so best.pt stays the one of epoch 0."""

    def validate(self):
        val = super().validate()
        return {**val, "val_score": val["val_score"] + len(self.history)}


def test_resume_restores_declared_outputs_snakemake_removed(manifest, tmp_path):  # noqa: F811
    torch.set_num_threads(1)
    args = (tt.CONFIG, "amdiff", "mct", manifest, tmp_path)
    LaterEpochsWorse(*args).fit(max_epochs_this_run=2, progress=False)
    best0 = load_checkpoint(tmp_path / "best.pt")
    assert best0["epoch"] == 0
    for name in DECLARED:                 # the job was killed; Snakemake re-runs it
        (tmp_path / name).unlink()
    LaterEpochsWorse(*args).fit(progress=False)
    # epochs 1 and 2 did not improve on epoch 0, yet best.pt is back, with epoch 0's weights
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 0
    assert all(torch.equal(best["model"][k], best0["model"][k]) for k in best0["model"])
    log = pd.read_csv(tmp_path / "log.csv")
    assert log.epoch.tolist() == [0, 1, 2] and log.best.tolist() == [1, 0, 0]
    # killed after the final epoch's last.pt (or failed later): nothing is left to train, and
    # the re-run still has to leave its declared outputs
    for name in DECLARED:
        (tmp_path / name).unlink()
    LaterEpochsWorse(*args).fit(progress=False)
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "log.csv"), log)
    assert leftovers(tmp_path) == []
