"""Scheduler resources of the heavy rules grow with each attempt, so a retry after an
out-of-memory or out-of-time kill asks for more, and the rules use them."""

import subprocess
import sys

import pytest

from amdiff.resources import MAX_MEM_MB, by_attempt, job_resources, network_resources


def test_memory_and_time_double_with_each_attempt_up_to_the_cap():
    mem = by_attempt(8000, cap=20000)
    assert [mem(None, attempt) for attempt in (1, 2, 3, 4)] == [8000, 16000, 20000, 20000]
    res = job_resources(4000, 60)
    assert (res["mem_mb"](None, 2), res["runtime"](None, 2)) == (8000, 120)
    assert "gpu" not in res   # the rule sets it itself
    with pytest.raises(ValueError):
        by_attempt(0, cap=10)


@pytest.mark.parametrize("stage,device,first,gpu", [("train", "cpu", (8000, 120), 0), ("train", "cuda", (32000, 2880), 1),
                                                     ("predict", "cpu", (4000, 60), 0), ("predict", "cuda", (32000, 240), 1)])
def test_network_jobs_ask_for_their_device(stage, device, first, gpu):
    res = network_resources(stage, device)
    assert (res["mem_mb"](None, 1), res["runtime"](None, 1), res["gpu"]) == (*first, gpu)
    assert res["mem_mb"](None, 2) == min(2 * first[0], MAX_MEM_MB)


def test_an_inference_job_of_several_images_asks_for_their_time_and_one_images_memory():
    res = network_resources("predict", "cuda", images=lambda wildcards: len(wildcards["images"]))
    three = {"images": ["p005_r0", "p010_r0", "p020_r0"]}
    assert (res["runtime"](three, 1), res["runtime"](three, 2), res["mem_mb"](three, 1)) == (720, 1440, 32000)
    assert res["runtime"]({"images": []}, 1) == 240   # never below one image's time


def test_data_parallel_training_asks_for_a_gpu_and_memory_per_process():
    res = network_resources("train", "cuda", processes=4)
    assert (res["gpu"], res["mem_mb"](None, 1)) == (4, 4 * 32000)
    assert network_resources("train", "cpu", processes=2)["gpu"] == 0


@pytest.mark.parametrize("gpus", [1, 2])
def test_the_training_rule_takes_its_resources_from_these_functions(repo, tmp_path, venv_env, gpus):
    """Snakemake evaluates the rule's resource callables: a dry run of a training job shows the
    first attempt's values (a CPU training job of the tiny config; with training.gpus 2, two
    processes' threads and memory)."""
    override = tmp_path / "gpus.yaml"
    override.write_text(f"training: {{gpus: {gpus}}}\n")
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-n",
                             "--directory", str(tmp_path), "--configfile", str(repo / ".test/config/config.yaml"),
                             str(override), "--cores", "4", "--printshellcmds", "results/models/amdiff/mct/best.pt"],
                            env=venv_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    block = result.stdout.split("rule train_diffusion:", 1)[1].split("\n\n", 1)[0]
    assert f"mem_mb={8000 * gpus}" in block and "runtime=120" in block, block
    assert f"threads: {gpus}" in block or gpus == 1, block
