"""A job's log: timestamped lines from the CLI, and progress as log lines off a terminal."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest
from tqdm import tqdm

from amdiff import joblog
from amdiff.joblog import LoggedProgress, progress


@pytest.fixture
def records(caplog):
    caplog.set_level(logging.INFO, logger="amdiff.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "amdiff.progress"]


def test_off_a_terminal_progress_is_one_log_line_per_tenth(records, monkeypatch):
    monkeypatch.setattr(joblog, "on_terminal", lambda: False)
    seen = []
    for item in progress(range(20), desc="ddim", unit="step"):
        seen.append(item)
    assert seen == list(range(20))
    lines = records()
    assert len(lines) == 10
    assert [int(re.search(r"(\d+)%", line).group(1)) for line in lines] == list(range(10, 101, 10))
    assert lines[-1].startswith("ddim: 100% (20/20 step), 0:00 elapsed, 0:00 left")


def test_a_resumed_run_counts_from_where_it_starts_and_a_stop_is_logged(records, monkeypatch):
    monkeypatch.setattr(joblog, "on_terminal", lambda: False)
    bar = progress(range(6, 9), desc="train", unit="epoch", initial=6, total=10)
    for epoch in bar:
        bar.set_postfix(val_score=0.123456, best=1.0)
    lines = records()
    # 7/10, 8/10 and 9/10 cross 70, 80, 90 %; the run stopped there, short of 100 %
    assert [line.split(",")[0] for line in lines] == [
        "train:  70% (7/10 epoch)", "train:  80% (8/10 epoch)", "train:  90% (9/10 epoch)"]
    assert lines[-1].endswith("val_score=0.1235, best=1")
    manual = LoggedProgress(total=4, desc="OSEM", unit="subset")
    manual.update(1)
    manual.close()      # stopped at 1 of 4: the last line says so
    assert len(records()) == 4 and "OSEM:  25% (1/4 subset)" in records()[-1]


def test_on_a_terminal_it_is_tqdm_and_disabled_it_says_nothing(records, monkeypatch):
    monkeypatch.setattr(joblog, "on_terminal", lambda: True)
    assert isinstance(progress(range(3), desc="x"), tqdm)
    monkeypatch.setattr(joblog, "on_terminal", lambda: False)
    assert list(progress(range(3), desc="x", enabled=False)) == [0, 1, 2]
    assert records() == []


def test_the_cli_writes_timestamped_lines_without_carriage_returns(tmp_path):
    script = (
        "import logging\n"
        "import amdiff.commands.workflow as workflow\n"
        "from amdiff.cli import main\n"
        "from amdiff.joblog import progress\n"
        "def fake(args):\n"
        "    logging.getLogger('amdiff.recon.osem').info('summary of %s', args.config)\n"
        "    for _ in progress(range(4), desc='demo', unit='item'):\n"
        "        pass\n"
        "workflow.check_config = fake\n"
        "raise SystemExit(main(['check-config', 'some.yaml']))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "\r" not in run.stderr
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO"
    lines = run.stderr.splitlines()
    assert re.fullmatch(rf"{stamp} amdiff\.recon\.osem: summary of some\.yaml", lines[0])
    assert len(lines) == 5 and all(re.match(rf"{stamp} amdiff\.progress: demo: ", line) for line in lines[1:])
