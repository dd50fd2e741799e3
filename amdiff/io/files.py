"""Input files and output folders: one-line refusals instead of hangs, tracebacks or wrong causes.

``check_input_file`` runs before a reader opens a file: a FIFO (or a terminal, a socket) would
block the reader forever or look like an empty file, and a directory is not a file that "does
not exist". ``write_error`` turns an operating-system error of a write (disk full, quota, a
read-only or unwritable folder, a file where a folder should be) into one line naming the
output and the reason.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from amdiff.errors import InputError

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def file_kind(mode: int) -> str:
    """What a non-regular, non-directory file is, e.g. "a FIFO"."""
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def check_input_file(path, what: str = "file") -> Path:
    """``path`` as a Path if it names a readable regular file (symbolic links followed).

    Otherwise raises InputError naming ``path``: "<what> does not exist", "is a broken
    symbolic link ...", "is a directory, not a <what>", "is not a regular file (a FIFO)...",
    or "cannot read it (<OS reason>)". Nothing is opened, so a FIFO never blocks.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise InputError(path, f"{what} is a broken symbolic link (to {os.readlink(path)})") from None
        raise InputError(path, f"{what} does not exist") from None
    except NotADirectoryError:
        raise InputError(path, f"{what} does not exist (a folder on its path is a file)") from None
    except OSError as exc:
        raise InputError(path, f"cannot read it ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise InputError(path, f"is a directory, not a {what}")
    if not stat.S_ISREG(mode):
        raise InputError(path, f"is not a regular file ({file_kind(mode)}); expected a {what}")
    if not os.access(path, os.R_OK):
        raise InputError(path, f"cannot read it ({os.strerror(errno.EACCES)})")
    return path


def write_error(output, exc: OSError) -> InputError:
    """One-line InputError for an OSError raised while writing ``output``.

    Names the output and the operating system's reason, e.g. ``out/hc.nii.gz: cannot write it
    (No space left on device)``; a folder on the way that is a file is named as such.
    """
    output = Path(output)
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = _file_in_the_way(output.parent)
        if blocker is not None:
            return InputError(output, f"cannot write it: {blocker} is a file, not a folder")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        folder = _first_existing(output.parent)
        return InputError(output, f"cannot write it: folder {folder} is not writable ({reason})")
    return InputError(output, f"cannot write it ({reason})")


def check_output_path(output) -> None:
    """Refuse, before any work is done, an output file that cannot be written: a directory of
    that name, a file where one of its folders should be, or a folder without write access.
    Raises one-line InputError naming ``output``; creates nothing."""
    output = Path(output)
    if output.is_dir():
        raise InputError(output, "is a directory; expected the path of an output file")
    blocker = _file_in_the_way(output.parent)
    if blocker is not None:
        raise InputError(output, f"cannot write it: {blocker} is a file, not a folder")
    folder = _first_existing(output.parent)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(output, f"cannot write it: folder {folder} is not writable "
                                 f"({os.strerror(errno.EACCES)})")


def make_output_dir(folder) -> Path:
    """Create ``folder`` (and its parents) for outputs; a file in the way, or a folder that
    cannot be created, raises one-line InputError naming ``folder``."""
    folder = Path(folder)
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        raise InputError(folder, f"cannot create the output folder: {blocker} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = _first_existing(folder)
        raise InputError(folder, f"cannot create the output folder in {where} ({exc.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(folder, f"output folder is not writable ({os.strerror(errno.EACCES)})")
    return folder


def _file_in_the_way(folder: Path) -> Path | None:
    """The first path of ``folder`` or its parents that exists and is not a directory."""
    for p in (folder, *folder.parents):
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


def _first_existing(folder: Path) -> Path:
    for p in (folder, *folder.parents):
        if p.exists():
            return p
    return folder
