"""Safe output writing: atomic replacement, no temporaries left behind, inputs never overwritten.

An output is written to a temporary sibling and renamed, so a crash, a raised error or a
signal never leaves a half-written file under the final name. Every temporary still being
written is listed in a registry; the handler that ``remove_temporaries_on_signals`` installs
(the CLI does, once) deletes them on SIGTERM (a SLURM time limit, ``scancel``), SIGINT
(Ctrl-C) and SIGHUP, so that not even a ``.*.tmp*`` file remains. ``refuse_overwriting_inputs``
stops a command whose output is one of its own inputs before anything is written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

from amdiff.errors import InputError
from amdiff.io.files import check_output_path, make_output_dir, write_error

# temporary path -> id of the process writing it (a forked child inherits the registry but
# must not delete its parent's temporaries)
_live: dict[str, int] = {}

SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGINT", None),
                            getattr(signal, "SIGHUP", None)) if s is not None)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``final``; rename it to ``final`` on success.

    The temporary name keeps the final name's suffixes (e.g. ``.nii.gz``) so that
    libraries choosing a format from the extension still work. On an exception the
    temporary is deleted and ``final`` is left as it was; while the block runs the
    temporary is listed for the signal handler of ``remove_temporaries_on_signals``.
    A failing write (disk full, quota, unwritable folder, a file where the folder should be)
    raises one-line InputError naming ``final`` and the operating system's reason.
    """
    final = Path(final)
    make_output_dir(final.parent)
    suffix = suffix if suffix is not None else "".join(final.suffixes)
    try:
        tmp = _create_temporary(final, suffix)
    except OSError as exc:
        raise write_error(final, exc) from None
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if _is_write_failure(exc, tmp, final):
            raise write_error(final, exc) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _live.pop(str(tmp), None)


# errors that only a write raises; other OSErrors count as write failures when they name the
# temporary or the output, or no file at all (a write to an open file object names none)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _is_write_failure(exc: OSError, tmp: Path, final: Path) -> bool:
    """Whether ``exc``, raised in an ``atomic_path`` block, comes from writing its output
    (not, say, from reading an input inside the block)."""
    if exc.errno in _WRITE_ERRNOS or exc.filename is None:
        return True
    return os.fspath(exc.filename) in (str(tmp), str(final), os.path.abspath(tmp), os.path.abspath(final))


def _create_temporary(final: Path, suffix: str) -> Path:
    """Create the empty file ``.<final name>.<random>.tmp<suffix>`` next to ``final``.

    The name is registered before the file exists, so a signal arriving at any moment
    finds every temporary that exists. The file gets the usual umask-based mode (``os.open``
    applies the umask), not mkstemp's owner-only 0600: other users of a shared cluster must
    be able to read the results.
    """
    while True:
        tmp = final.parent / f".{final.name}.{secrets.token_hex(6)}.tmp{suffix}"
        _live[str(tmp)] = os.getpid()
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:   # another writer's name (48 random bits): draw again
            _live.pop(str(tmp), None)
        except BaseException:
            _live.pop(str(tmp), None)
            raise


def live_temporaries() -> list[Path]:
    """The temporaries this process is writing now (``atomic_path`` blocks not yet left)."""
    pid = os.getpid()
    return [Path(p) for p, owner in list(_live.items()) if owner == pid]


def remove_live_temporaries() -> None:
    """Delete every temporary this process is writing; the final outputs stay as they were."""
    for tmp in live_temporaries():
        with contextlib.suppress(OSError):
            os.unlink(tmp)


@contextlib.contextmanager
def remove_temporaries_on_signals(prog: str = "amdiff"):
    """While the block runs, SIGTERM, SIGINT and SIGHUP first delete the live temporaries.

    Then SIGINT raises KeyboardInterrupt as usual; SIGTERM and SIGHUP print one line
    ``<prog>: stopped by SIGTERM`` on stderr and end the process at once with status
    128 + the signal number. A signal the caller ignores (``nohup``, SIGINT of a background
    job) stays ignored. The previous handlers are restored when the block ends. Outside the
    main thread, where Python cannot install handlers, nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def handler(signum, frame):
        remove_live_temporaries()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        for stream in (sys.stdout, sys.stderr):   # os._exit would drop buffered log lines
            with contextlib.suppress(Exception):
                stream.flush()
        if os.getpid() == owner:   # not a forked worker being stopped by its parent
            with contextlib.suppress(OSError):
                # os.write, not print: the signal may have interrupted a write to sys.stderr
                os.write(2, f"{prog}: stopped by {signal.Signals(signum).name}\n".encode())
        # no unwinding: a finally block (joining a worker, say) could outlast SLURM's kill wait
        os._exit(128 + signum)

    previous = {}
    try:
        for signum in SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, handler)
        yield
    finally:
        for signum, old in previous.items():
            # None: a handler installed outside Python, which cannot be put back; use the default
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


def refuse_overwriting_inputs(inputs: Iterable, outputs: Iterable) -> None:
    """Raise InputError naming the first output that is also one of the inputs, or that cannot
    be written (``amdiff.io.files.check_output_path``: a directory of that name, a file where its
    folder should be, a folder without write access).

    An output is an input when both name the same path once symlinks and ``..`` are
    resolved, or when both exist and are the same file (``os.path.samefile``: a hard
    link too). ``None`` entries (optional arguments not given) are skipped.
    """
    ins = [(Path(p), Path(p).resolve()) for p in inputs if p is not None]
    for out in outputs:
        if out is None:
            continue
        out = Path(out)
        real = out.resolve()
        for inp, inp_real in ins:
            if real == inp_real or _same_file(out, inp):
                via = "" if os.path.abspath(out) == os.path.abspath(inp) else f" (the input {inp})"
                raise InputError(out, f"is both an input and an output{via}; writing it would "
                                      "overwrite the input, choose another output path")
        check_output_path(out)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:   # one of them does not exist (yet)
        return False


def write_text(final: str | os.PathLike, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text)
