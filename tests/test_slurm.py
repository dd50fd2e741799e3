"""profiles/slurm against a real SLURM: a one-node cluster on localhost runs a slice of the demo
(phantom -> simulate_listmode -> downsample for one subject) through
snakemake-executor-plugin-slurm, and each job's record in slurmctld must carry what Snakemake
planned for it: threads as CPUs per task, mem_mb, runtime, partition and the GPU request.

Debian's SLURM 22.05 is installed with apt-get when missing; the test skips only where that
cannot be done (not root, no apt-get). Accounting is off, as on a machine without slurmdbd, so
the run relies on the profile's `slurm-status-command: squeue`.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.slurm_cluster import GPU_TYPE, CannotInstall, SlurmCluster, ensure_installed

TIME_LIMIT_S = 600          # hard limit for the whole test, installation included
SUBJECT = ("mct", "mct001")
TARGET = "results/{}/{}/listmode/counts.json".format(*SUBJECT)
SLICE = {"phantom", "simulate_listmode", "downsample"}


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self, cap=None):
        left = self.end - time.monotonic()
        if left <= 0:
            pytest.fail(f"test_slurm ran past its {TIME_LIMIT_S} s limit")
        return left if cap is None else min(cap, left)


@pytest.fixture(scope="module")
def deadline():
    return Deadline(TIME_LIMIT_S)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory, request, deadline):
    try:
        how = ensure_installed(timeout=deadline.left(300))
    except CannotInstall as err:
        pytest.skip(f"cannot run a SLURM cluster here: {err}")
    print(f"SLURM: {how}")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    request.addfinalizer(cluster.stop)    # also after a failed test or a failed start
    cluster.start(timeout=deadline.left(60))
    return cluster


def run(cmd, env, cwd, timeout):
    """Run cmd in its own process group; on timeout end the whole group (snakemake and its
    children) and report what it printed."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"{' '.join(map(str, cmd[:3]))} ... did not finish within {timeout:.0f} s:\n{out[-6000:]}")
    except BaseException:           # e.g. Ctrl-C: do not leave snakemake running
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc.returncode, out


def plan(output):
    """Jobs of a snakemake run/dry-run printout: {(rule, wildcard values): {threads, resources}}."""
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", output):
        head = re.match(r"(?:local)?rule (\w+):\n", block)
        if not head:
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, re.M))
        wildcards = tuple(v.split("=", 1)[1] for v in fields.get("wildcards", "").split(", ") if v)
        resources = dict(item.split("=", 1) for item in fields.get("resources", "").split(", ") if "=" in item)
        jobs[(head.group(1), wildcards)] = {"threads": int(fields.get("threads", 1)), "resources": resources}
    return jobs


def mem_mb(value):
    """scontrol's MinMemoryNode ('2000M', '4G') in MB."""
    number, unit = re.fullmatch(r"([\d.]+)([KMGT]?)", value).groups()
    return round(float(number) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}[unit])


def minutes(value):
    """scontrol's TimeLimit ('00:10:00', '1-00:00:00') in minutes."""
    days, _, hms = value.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + s / 60


@pytest.mark.slow
def test_slurm_profile_runs_a_workflow_slice_with_each_rules_resources(slurm, repo, venv_env, tmp_path, deadline):
    if any(ch.isspace() for ch in f"{sys.executable}{repo}"):
        # upstream: snakemake-interface-executor-plugins puts sys.executable unquoted into the
        # batch job's command, so every job would exit 127 (README, "Run on a SLURM cluster")
        pytest.skip("a path with a space: Snakemake's SLURM jobs run the interpreter path unquoted")
    t0 = time.monotonic()
    env = slurm.env(venv_env)
    threads = min(2, slurm.cpus)    # threads above the rules' 1, to see them arrive
    common = ["snakemake", "-s", str(repo / "Snakefile"), "--directory", str(tmp_path),
              "--configfile", str(repo / ".test/config/config.yaml"),
              "--profile", str(repo / "profiles/slurm"),
              # the demo rules run on CPU: the phantom job stands in for a GPU rule
              "--set-resources", "phantom:gpu=1", f"phantom:gpu_model={GPU_TYPE}", "phantom:slurm_partition=gpu",
              "--set-threads", f"simulate_listmode={threads}"]

    # What Snakemake plans for each job: the rules' threads/resources, the profile, the overrides.
    rc, out = run([*common, "-n", "--cores", str(slurm.cpus), TARGET], env, tmp_path, deadline.left(120))
    assert rc == 0, out[-4000:]
    planned = plan(out)
    # the config files the jobs read are written by a local job (rule job_config), not submitted
    assert {rule for rule, _ in planned if rule == "job_config"} == {"job_config"}, out[-4000:]
    planned = {key: job for key, job in planned.items() if key[0] != "job_config"}
    assert {rule for rule, _ in planned} == SLICE and len(planned) == len(SLICE), out[-4000:]
    by_rule = {rule: job for (rule, _), job in planned.items()}
    # the slice tells the rules apart: different memory and runtime, a GPU job, threads > 1
    assert by_rule["phantom"]["resources"]["mem_mb"] != by_rule["simulate_listmode"]["resources"]["mem_mb"]
    assert by_rule["phantom"]["resources"]["runtime"] != by_rule["simulate_listmode"]["resources"]["runtime"]
    assert by_rule["phantom"]["resources"]["gpu"] == "1" and by_rule["downsample"]["resources"]["gpu"] == "0"
    assert by_rule["simulate_listmode"]["threads"] == threads

    # The run itself, through the SLURM executor ('init' shortened so the test waits less).
    rc, out = run([*common, "--slurm-init-seconds-before-status-checks", "5", TARGET], env, tmp_path,
                  deadline.left(360))
    run_s = time.monotonic() - t0
    assert rc == 0, f"{out[-6000:]}\n{slurm.logs()}"
    assert (tmp_path / TARGET).exists()
    assert len(re.findall(r"has been submitted with SLURM jobid", out)) == len(SLICE), out[-4000:]
    assert "Falling back to 'sacct'" not in out, "the status queries left squeue for sacct"

    records = slurm.jobs()
    for (rule, wildcards), job in planned.items():
        comment = f"rule_{rule}" + (f"_wildcards_{'_'.join(wildcards)}" if wildcards else "")
        mine = [r for r in records if r.get("Comment") == comment]
        assert mine, f"no SLURM job for {comment}: {[r.get('Comment') for r in records]}"
        assert mine[-1]["JobState"] == "COMPLETED", mine[-1]
        res = job["resources"]
        for r in mine:
            got = {"threads": int(r["CPUs/Task"]), "mem_mb": mem_mb(r["MinMemoryNode"]),
                   "runtime": minutes(r["TimeLimit"]), "partition": r["Partition"]}
            want = {"threads": job["threads"], "mem_mb": int(res["mem_mb"]), "runtime": int(res["runtime"]),
                    "partition": res["slurm_partition"]}
            assert got == want, f"{comment}: SLURM has {got}, Snakemake planned {want}"
            assert int(r["NumCPUs"]) >= job["threads"]
            gpus = int(res.get("gpu", 0))
            if gpus:
                gres = f"gpu:{res['gpu_model']}:{gpus}" if res.get("gpu_model") else f"gpu:{gpus}"
                assert r.get("TresPerJob") == f"gres:{gres}", r     # requested
                assert r.get("JOB_GRES", "").startswith(f"gpu:{GPU_TYPE}:{gpus}"), r   # allocated
            else:
                assert "gpu" not in r.get("TresPerJob", "") + r.get("JOB_GRES", ""), r
    print(f"SLURM slice: {len(planned)} jobs in {run_s:.0f} s (dry run included)")


def test_slurm_profile_sends_every_gpu_job_to_the_gpu_partition(repo, venv_env, tmp_path):
    """Paper config: a job that asks for a GPU lands in the profile's GPU partition, the others
    in the default one; every rule the profile names exists."""
    profile = yaml.safe_load((repo / "profiles/slurm/profile.yaml").read_text())
    cpu_partition = profile["default-resources"]["slurm_partition"]
    assert profile["slurm-status-command"] in ("sacct", "squeue")
    cmd = ["snakemake", "-s", str(repo / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(repo / "config/paper.yaml"), "--profile", str(repo / "profiles/slurm"),
           "-n", "--cores", "64"]
    result = subprocess.run(cmd, env=venv_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = plan(result.stdout + result.stderr)
    rules = {rule for rule, _ in jobs}
    assert set(profile["set-resources"]) <= rules, set(profile["set-resources"]) - rules
    gpu_partitions = {res["slurm_partition"] for res in profile["set-resources"].values()}
    assert cpu_partition not in gpu_partitions
    wrong = {}
    for (rule, _), job in jobs.items():
        res = job["resources"]
        want = gpu_partitions if int(res.get("gpu", 0)) else {cpu_partition}
        if res.get("slurm_partition") not in want:
            wrong[rule] = (res.get("gpu"), res.get("slurm_partition"))
    assert not wrong, f"rule: (gpu, partition) in the wrong partition: {wrong}"
    assert any(int(job["resources"].get("gpu", 0)) for job in jobs.values())


LOCAL_RULES_SCRIPT = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
snakefile, configfile, workdir = map(Path, sys.argv[1:4])
with SnakemakeApi(OutputSettings()) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=snakefile, workdir=workdir,
                            config_settings=ConfigSettings(configfiles=[configfile]))._workflow
    print(json.dumps(sorted(workflow._localrules)))
"""


def job_counts(output):
    """{rule: jobs} from the first 'Job stats' table of a snakemake printout."""
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, re.M) if rule != "total"}


def test_second_long_jobs_run_in_snakemake_instead_of_the_queue(repo, venv_env, tmp_path):
    """Evaluation, QC and manifest jobs take about a second each: they are local rules, so on a
    cluster they run in the Snakemake process instead of each waiting in the queue as a batch job.
    Counts, for the tiny config under the SLURM profile, how many jobs reach SLURM."""
    cmd = ["snakemake", "-s", str(repo / "Snakefile"), "--directory", str(tmp_path), "-n",
           "--configfile", str(repo / ".test/config/config.yaml"), "--profile", str(repo / "profiles/slurm")]
    result = subprocess.run(cmd, env=venv_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout + result.stderr)
    script = subprocess.run([sys.executable, "-c", LOCAL_RULES_SCRIPT, str(repo / "Snakefile"),
                             str(repo / ".test/config/config.yaml"), str(tmp_path / "api")],
                            env=venv_env, capture_output=True, text=True, timeout=600)
    assert script.returncode == 0, script.stderr[-3000:]
    local = set(json.loads(script.stdout.strip().splitlines()[-1]))
    assert local <= set(counts), local - set(counts)
    assert {"evaluate_subject", "qc_subject", "subject_stats"} <= local
    heavy = {"phantom", "simulate_listmode", "downsample", "recon_highcount", "recon_lowcount", "organ_labels",
             "train_diffusion", "train_baseline", "predict_amdiff", "predict_denoiser_baseline",
             "predict_segmenter_baseline", "tables", "figure_slices"}
    assert not heavy & local, heavy & local
    before = sum(n for rule, n in counts.items() if rule != "all")    # `all` runs nothing
    after = sum(n for rule, n in counts.items() if rule != "all" and rule not in local)
    print(f"tiny config under profiles/slurm: {after} of {before} jobs reach SLURM "
          f"({before - after} run in the Snakemake process)")
    assert before - after >= counts["evaluate_subject"] + counts["qc_subject"] + counts["subject_stats"]
