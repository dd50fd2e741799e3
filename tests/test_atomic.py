"""Atomic writes: all or nothing under the final name, with the usual file mode."""

import os
import stat

import pytest

from amdiff.io.atomic import atomic_path, write_text


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
