"""Evaluation figures: Fig. 4-6 analogs (coronal slices, ``slices``), Fig. 7 analog (regression
of automatic on ground-truth quantification, ``regression``) and the training curves
(``training``); model names and order shared by all three in ``labels``.

Everything reads the per-case metrics table of :mod:`amdiff.evaluate.columns` and the file
layout of the workflow:

* references  ``{results}/{site}/{subject}/hc.nii.gz``, ``lc_{image}.nii.gz``, ``lesion.nii.gz``,
  ``organs.nii.gz``;
* predictions ``{results}/predictions/{model}/{site}/{subject}/{image}/{denoised,lesion,organs}.nii.gz``
  (AMDiff variants write all three, comparison denoisers only ``denoised``, comparison
  segmenters only ``lesion`` and ``organs``).

Display conventions (:mod:`amdiff.plotting`, as in the QC figure): images are reoriented to the
closest RAS+ axes; a slice panel is the coronal plane (fixed index on RAS+ axis 1, anterior-
posterior) with the head up and the patient's right on the viewer's left (radiological);
PET uses an inverted grey scale (high uptake dark) with one SUV window shared by all panels
of a figure. A 2D array handed to a panel function is taken as already laid out this way.

Missing model outputs: a model whose prediction folder holds none of the three files is left
out of every slice figure and named in a footnote ("no predictions: ..."); a model that lacks
only the outputs its kind never writes (a denoiser's masks, a segmenter's image) simply has no
panel in the figure that needs them.

A demo run's figures carry its smoke-test line (``banner``, `amdiff.evaluate.budget`) as the
first line of their title.

Figures are built on :class:`matplotlib.figure.Figure` directly (not pyplot), so nothing is
registered globally and nothing needs closing; files are written atomically.
"""

from amdiff.evaluate.figures.labels import model_family, model_label, order_models, with_banner
from amdiff.evaluate.figures.regression import (MAX_TICKS, compact_number, regression_figure,
                                                regression_limits, regression_stats)
from amdiff.evaluate.figures.slices import (PANELS_PER_ROW, SLICE_FIGURES, TRUTH_COLOUR, Case,
                                            choose_case, coronal_slice, denoising_panels,
                                            lesion_panels, lesion_slice, load_case, organ_caption,
                                            organ_panels, panel_grid, slice_figure_paths,
                                            write_slice_figures)
from amdiff.evaluate.figures.training import best_epoch, train_column, training_curves

__all__ = [
    "MAX_TICKS", "PANELS_PER_ROW", "SLICE_FIGURES", "TRUTH_COLOUR", "Case", "best_epoch", "choose_case",
    "compact_number", "coronal_slice", "denoising_panels", "lesion_panels", "lesion_slice",
    "load_case", "model_family", "model_label", "order_models", "organ_caption", "organ_panels",
    "panel_grid", "regression_figure", "regression_limits", "regression_stats",
    "slice_figure_paths", "train_column", "training_curves", "with_banner", "write_slice_figures",
]
