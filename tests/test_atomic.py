"""Atomic writes: all or nothing under the final name, with the usual file mode, and no
temporary left behind by an error or a signal (tests/test_signals.py sends real ones)."""

import os
import signal
import stat

import pytest

from amdiff.io.atomic import atomic_path, live_temporaries, remove_temporaries_on_signals, write_text


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    final = tmp_path / "table.tsv"
    write_text(final, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert final.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["table.tsv"]


def test_temporary_keeps_the_suffix_and_the_output_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "img.nii.gz") as tmp:
            assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    # mkstemp alone would leave 0600: other users of a shared cluster could not read results
    assert stat.S_IMODE((tmp_path / "img.nii.gz").stat().st_mode) == 0o644


def test_temporaries_are_listed_only_while_written(tmp_path):
    with atomic_path(tmp_path / "a.tsv") as tmp:
        assert live_temporaries() == [tmp] and tmp.exists()
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "b.tsv") as tmp:
            raise RuntimeError("crash mid-write")
    assert live_temporaries() == [] and sorted(p.name for p in tmp_path.iterdir()) == ["a.tsv"]


def test_signal_handlers_are_restored_and_an_ignored_signal_stays_ignored():
    # SIGINT set here, not inherited: under nohup or `cmd &` it arrives ignored, and stays so
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with remove_temporaries_on_signals():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)


def test_sigint_deletes_the_temporaries_then_raises_keyboard_interrupt(tmp_path):
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal
    try:
        with pytest.raises(KeyboardInterrupt):
            with remove_temporaries_on_signals(), atomic_path(tmp_path / "img.nii.gz") as tmp:
                tmp.write_bytes(b"half")
                signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, old_int)
    assert list(tmp_path.iterdir()) == []
