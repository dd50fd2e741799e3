"""Organ label maps (0 background, 1 liver, 2 lung, 3 bone, 4 muscle, 5 kidney, 6 spleen, 7 aorta).

``totalseg`` runs TotalSegmentator on the CT and maps its classes; ``load_provided_labels``
(amdiff.io.nifti) checks a user-supplied map. TotalSegmentator (and torch) are imported only when used.
"""

from amdiff.contracts import N_ORGAN_CLASSES, ORGAN_CLASSES
from amdiff.io.nifti import load_provided_labels
from amdiff.labels.totalseg import (
    check_weights,
    label_ct,
    map_multilabel,
    organ_mapping,
    roi_subset,
)

__all__ = ["N_ORGAN_CLASSES", "ORGAN_CLASSES", "check_weights", "label_ct", "load_provided_labels",
           "map_multilabel", "organ_mapping", "roi_subset"]
