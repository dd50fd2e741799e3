"""Reconstruction by the user's own engine (``recon.engine: external``).

The site's ``recon.command`` is a command template, for example

    castor-recon -df {listmode} -fout {output} -it {iterations}:{subsets} -atn {mumap}

It is split into words like a shell line (``shlex``), each placeholder is filled inside its word,
and the words run as one program without a shell, so a path with spaces, quotes or ``$(...)``
stays one argument and runs nothing. Placeholders (``amdiff.contracts.RECON_PLACEHOLDERS``): the list-mode file, the
mu-map (1/cm, on the image grid), the image to write, the site's iterations, subsets and
post-filter FWHM, the share of the full list's counts this list holds, and the image grid.

The engine writes the activity concentration (Bq/mL) of the list it was given, on the mu-map's
grid, as NIfTI. That image is checked like any input image (3D, finite, non-negative, shape and
affine of the mu-map) and then treated as the internal engine's output: divided by the count
fraction (our choice: an engine reconstructs a down-sampled list like a shorter scan, so its
image is the count fraction times the activity; the internal OSEM scales its sensitivity
instead, ``amdiff.recon.osem``), and converted to SUV with the patient weight and injected
activity of the list's PETSIRD header by the same code as the internal engine. The engine's
image is written to a temporary file next to the output, deleted on error and on SIGTERM.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np

from amdiff.contracts import template_fields
from amdiff.errors import InputError
from amdiff.io.atomic import atomic_path
from amdiff.io.nifti import AFFINE_ATOL_MM, read_volume, write_volume
from amdiff.physics.suv import concentration_to_suv

# the external engine's run time is the job's; this only stops a hung engine
TIMEOUT_S = 24 * 3600


def command_words(template: str, values: dict, source: str) -> list[str]:
    """The program and its arguments: each word of the template with its placeholders filled."""
    template_fields(template, source)
    return [word.format(**values) for word in shlex.split(template)]


def _grid(values) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def reconstruct_external(template: str, listmode, mumap, out_path, recon_cfg: dict, *,
                         count_fraction: float, acquisition: dict, source: str, log_file=None) -> Path:
    """Run the external engine on one list and write its image as SUV to ``out_path``.

    ``acquisition``: weight_kg and injected_mbq from the list's PETSIRD header. ``source``
    names the config (for errors about the template). The engine's stdout and stderr go to
    ``log_file`` (an open file) or are captured and quoted when it fails.
    """
    if not 0.0 < float(count_fraction) <= 1.0:
        raise ValueError(f"count_fraction must lie in (0, 1], got {count_fraction}")
    template_fields(template, source)   # a bad template: one line, before anything runs
    mu = read_volume(mumap, "mumap")
    program = shlex.split(template)[0]
    if shutil.which(program) is None:
        raise InputError(source, f"recon.command: program {program!r} is not found (not on PATH "
                                 "and not an executable file)")
    out_path = Path(out_path)
    with atomic_path(out_path) as engine_image:
        values = {"listmode": str(listmode), "mumap": str(mumap), "output": str(engine_image),
                  "iterations": int(recon_cfg["iterations"]), "subsets": int(recon_cfg["subsets"]),
                  "postfilter_fwhm_mm": float(recon_cfg["postfilter_fwhm_mm"]),
                  "count_fraction": float(count_fraction), "shape": _grid(mu.data.shape),
                  "voxel_size_mm": _grid([float(v) for v in mu.voxel_size_mm])}
        words = command_words(template, values, source)
        engine_image.unlink()   # the engine creates it: a file left empty means it wrote nothing
        try:
            done = subprocess.run(words, stdout=log_file or subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=TIMEOUT_S, check=False)
        except OSError as exc:
            raise InputError(source, f"recon.command: cannot run {program!r} ({exc.strerror})") from None
        if done.returncode != 0:
            tail = " | ".join((done.stdout or "").strip().splitlines()[-3:])
            raise InputError(source, f"recon.command: {program} exited with status {done.returncode} "
                                     f"on {listmode}" + (f": {tail}" if tail else ""))
        if not engine_image.exists():
            raise InputError(source, f"recon.command: {program} wrote no image to {{output}}")
        image = read_volume(engine_image, "image")
        where = f"image of {program} for {listmode}"
        if image.data.shape != mu.data.shape:
            raise InputError(where, f"shape {image.data.shape} differs from the mu-map's {mu.data.shape} "
                                    f"({mumap}); the engine must write on the mu-map's grid")
        if not np.allclose(image.affine, mu.affine, atol=AFFINE_ATOL_MM):
            raise InputError(where, f"affine differs from the mu-map's ({mumap}): the engine must write "
                                    "on the mu-map's grid")
        if image.data.min() < 0:
            raise InputError(where, f"negative activity down to {image.data.min():.4g} Bq/mL")
        if not image.data.max() > 0:
            raise InputError(where, "holds no positive activity (an empty image)")
        activity = image.data / float(count_fraction)
        suv = concentration_to_suv(activity, acquisition["weight_kg"], acquisition["injected_mbq"])
        write_volume(engine_image, suv, mu.affine)
    return out_path
