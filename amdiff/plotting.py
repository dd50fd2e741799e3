"""What every figure of the workflow shares: colours, display orientation, axis style, saving.

Display conventions (clinical PET): images are reoriented to the closest RAS+ axes; a coronal
view looks along anterior-posterior (RAS+ axis 1) with the head up and the patient's right on
the viewer's left (radiological); PET is shown in an inverted grey scale (high uptake dark).
The QC figure (:mod:`amdiff.qc.figures`) and the evaluation figures
(:mod:`amdiff.evaluate.figures`) both draw this way.

Figures run headless (the Agg backend: clusters have no display) and are written atomically.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # headless: the workflow runs on clusters without a display

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from amdiff.io.atomic import atomic_path  # noqa: E402
from amdiff.io.nifti import Volume  # noqa: E402

DPI = 150
# Colour-blind-aware colours per organ label (amdiff.contracts.ORGAN_CLASSES); red is reserved
# for lesions.
ORGAN_COLOURS = {
    1: "#8c510a",  # liver: brown
    2: "#56b4e9",  # lung: sky blue
    3: "#f0e442",  # bone: yellow
    4: "#fdd0a2",  # muscle: pale peach
    5: "#7b3294",  # kidney: purple
    6: "#1b9e77",  # spleen: green
    7: "#e377c2",  # aorta: pink
}
LESION_RGBA = (1.0, 0.0, 0.0, 1.0)
SUV_PERCENTILE = 99.9          # robust top of a shared SUV window, taken from the reference image


def canonical(vol: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reorient to the closest RAS+ axes so axis 1 is anterior-posterior and axis 2 points up."""
    img = nib.as_closest_canonical(nib.Nifti1Image(vol.data, vol.affine))
    zooms = tuple(float(z) for z in np.linalg.norm(img.affine[:3, :3], axis=0))
    return np.asanyarray(img.dataobj), zooms


def coronal(arr: np.ndarray, reduce=np.max) -> np.ndarray:
    """Project along y and lay out for display: rows = z from head (row 0) down,
    columns = x from patient right (column 0) to left."""
    proj = reduce(arr, axis=1)           # (x, z)
    return proj[::-1, ::-1].T            # (z descending, x descending)


def style_axis(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():  # a thin frame separates noisy panels that touch
        spine.set_color("#b0b0b0")
        spine.set_linewidth(0.6)


def save_figure(fig: Figure, png=None, pdf=None, dpi: int = DPI) -> None:
    """Write the PNG and/or PDF atomically (a failed save leaves no partial file)."""
    for path, fmt in ((png, "png"), (pdf, "pdf")):
        if path is None:
            continue
        with atomic_path(os.fspath(path)) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi)
