"""SIGTERM (a SLURM time limit, scancel) and SIGINT (Ctrl-C) leave no temporary files.

Each case starts a real process that runs ``amdiff.cli.main`` on a verb stalled in the middle
of writing its outputs, waits until the ``.*.tmp*`` temporaries exist, sends the signal, and
checks that the process ends with 128 + the signal number and one stderr line, that no
temporary remains, that no output exists under its final name, and that the input is unchanged.
The stall is the only thing patched: downsample runs its real code with its writers open
(the input reader blocks after the first time block), and the checkpoint case blocks
``torch.save`` after it has filled ``.last.pt.*.tmp.pt``, as the trainer's writes do.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amdiff.listmode import petsird_io as pio
from tests.test_listmode_io import SCANNER, header, random_blocks

REPO = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 60

PRELUDE = """
import signal, sys, time
from pathlib import Path
# as launched from an interactive shell: a background job or a test runner may have
# inherited SIGINT ignored, which amdiff rightly keeps ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
from amdiff.cli import main

def stall():
    Path(sys.argv[0]).with_suffix(".stalled").touch()   # tells the test to send the signal
    time.sleep(120)
"""

DOWNSAMPLE = PRELUDE + """
import amdiff.listmode.downsample as ds

class StallingReader(ds.RawReader):
    def time_blocks(self):
        blocks = super().time_blocks()
        yield next(blocks)
        stall()        # every output's temporary is open, its header written
        yield from blocks

ds.RawReader = StallingReader
sys.exit(main(sys.argv[1:]))
"""

CHECKPOINT = PRELUDE + """
import torch
from amdiff.commands import train as train_commands
from amdiff.train.checkpoint import save_checkpoint

save = torch.save
def stalling_save(payload, path):
    save(payload, path)
    stall()            # the temporary is complete but not yet renamed to last.pt
torch.save = stalling_save

def train(args):
    save_checkpoint(Path(args.out_dir) / "last.pt", {"epoch": 1, "weights": torch.zeros(1000)})
train_commands.train = train
sys.exit(main(sys.argv[1:]))
"""


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if ".tmp" in p.name)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _interrupt(tmp_path, script: str, argv: list, out: Path, n_temporaries: int, signum: int):
    """Run ``script`` with ``argv``; once it stalls with ``n_temporaries`` temporaries in ``out``,
    send ``signum``. Returns (exit status, stderr)."""
    path = tmp_path / "stalled.py"
    path.write_text(script)
    proc = subprocess.Popen([sys.executable, str(path), *map(str, argv)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not path.with_suffix(".stalled").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "the process never reached its stall"
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        assert len(_temporaries(out)) == n_temporaries, _temporaries(out)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:   # hang guard: never leave the child behind
            proc.kill()
            proc.wait()
    return proc.returncode, err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_downsample_removes_every_temporary(tmp_path, signum):
    src = tmp_path / "full.petsird"
    pio.write_listmode(src, header(), random_blocks(SCANNER, [300, 300, 300]))
    before = _sha(src)
    out = tmp_path / "out"
    argv = ["downsample", "--input", src, "--levels", "5,10", "--realizations", "2", "--seed", "1",
            "--outdir", out / "lists", "--counts", out / "counts.json"]
    status, err = _interrupt(tmp_path, DOWNSAMPLE, argv, out, 4, signum)
    assert status == 128 + signum
    assert err.splitlines() == [f"amdiff: stopped by {signal.Signals(signum).name}"], err
    assert _temporaries(out) == []
    assert [p for p in out.rglob("*") if p.is_file()] == []   # no final output either
    assert _sha(src) == before


def test_sigterm_while_writing_a_checkpoint_removes_its_temporary(tmp_path):
    out = tmp_path / "model"
    argv = ["train", "--config", tmp_path / "unused.yaml", "--manifest", tmp_path / "unused.tsv",
            "--site", "mct", "--out-dir", out]
    status, err = _interrupt(tmp_path, CHECKPOINT, argv, out, 1, signal.SIGTERM)
    assert status == 128 + signal.SIGTERM
    assert err.splitlines() == ["amdiff: stopped by SIGTERM"], err
    assert _temporaries(out) == [] and not (out / "last.pt").exists()
