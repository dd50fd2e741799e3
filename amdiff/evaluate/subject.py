"""Per-subject evaluation: read a model's predictions and the references, return metric rows.

The references are the subject's high-count image and true masks
(``results/{site}/{subject}/hc, lesion, organs .nii.gz``), and its CT (``ct.nii.gz``), whose
body mask the whole-image NRMSE is taken over (`metrics.whole_image_nrmse`); the predictions of one model for
one low-count image sit in one folder (``results/predictions/{model}/{site}/{subject}/{pXXX_rN}/``)
holding whichever of denoised, lesion and organs that model produces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from amdiff.errors import InputError
from amdiff.io.files import check_input_file
from amdiff.evaluate.columns import COLUMNS, PAIR_KEYS
from amdiff.evaluate.metrics import NRMSE_WHOLE_DEFAULT, body_mask, evaluate_case
from amdiff.io.nifti import Volume, check_same_grid, read_volume
from amdiff.levels import clinical_percent, parse_image_name

OUTPUT_KINDS = {"denoised": "suv", "lesion": "labels", "organs": "labels"}


def read_references(hc: str | Path, lesion: str | Path, organs: str | Path,
                    ct: str | Path | None = None) -> dict[str, Volume]:
    """The subject's references on one grid; with ``ct`` also "body", its `body_mask`."""
    refs = {"hc": read_volume(hc, "suv"), "lesion": read_volume(lesion, "labels"),
            "organs": read_volume(organs, "labels")}
    if ct is not None:
        refs["ct"] = read_volume(ct, "ct")
    for name in ("lesion", "organs", "ct"):
        if name in refs:
            check_same_grid(refs["hc"], refs[name])
    if "ct" in refs:
        ct_vol = refs["ct"]
        refs["body"] = Volume(body_mask(ct_vol.data, axial_axis(ct_vol.affine)), ct_vol.affine,
                              f"body of {ct_vol.path}")
    if refs["lesion"].data.max() > 1:
        raise InputError(lesion, f"lesion mask must be binary, found label {refs['lesion'].data.max()}")
    return refs


def axial_axis(affine: np.ndarray) -> int:
    """The array axis that runs along the patient (closest to world z, RAS+ mm)."""
    return int(np.argmax(np.abs(np.asarray(affine)[2, :3])))


def read_prediction(folder: str | Path, outputs: tuple[str, ...], reference: Volume) -> dict:
    """The model's outputs on the reference grid; a missing expected output is an error."""
    arrays = {}
    for name in outputs:
        if name not in OUTPUT_KINDS:
            raise ValueError(f"unknown prediction output {name!r}")
        vol = read_volume(Path(folder) / f"{name}.nii.gz", OUTPUT_KINDS[name])
        check_same_grid(reference, vol)
        arrays[name] = vol.data
    if "lesion" in arrays and arrays["lesion"].max() > 1:
        raise InputError(Path(folder) / "lesion.nii.gz", "predicted lesion mask must be binary")
    return arrays


def evaluate_subject(model: str, site: str, subject: str, references: dict[str, Volume],
                     predictions: dict[str, str | Path], outputs: tuple[str, ...],
                     quant_images: dict[str, str | Path] | None = None,
                     standard_count_percent: float = 100.0,
                     lesion_match: dict | None = None,
                     nrmse_whole: str = NRMSE_WHOLE_DEFAULT) -> pd.DataFrame:
    """One row per low-count image of the subject.

    ``predictions`` maps image names (pXXX_rN) to prediction folders; ``quant_images`` maps
    them to the image a mask-only model quantifies on (the Med-DDPM output it was fed).
    ``standard_count_percent``: the share of the full list that the site's clinical scan holds;
    each row's clinical_percent is its level in percent of that.
    ``lesion_match``: how predicted and true lesions are matched ({"metric", "threshold"},
    config evaluation.lesion_match; `metrics.LESION_MATCH` when None).
    ``nrmse_whole``: the whole-image NRMSE's reading (config evaluation.nrmse_whole); the
    body readings need ``references["body"]`` (`read_references` with the CT).
    """
    hc = references["hc"]
    if "denoised" in outputs and nrmse_whole != "image_range" and "body" not in references:
        raise InputError(f"subject {subject}", f"nrmse_whole {nrmse_whole} needs the subject's CT "
                         "(--ct) for its body mask")
    body = references["body"].data if "body" in references else None
    try:
        clinical_percent(100, standard_count_percent)
    except ValueError as err:
        raise InputError(f"site {site}", str(err)) from None
    rows = []
    for image, folder in sorted(predictions.items()):
        percent, realization = parse_image_name(image)
        pred = read_prediction(folder, outputs, hc)
        quant = None
        if quant_images and image in quant_images:
            quant_vol = read_volume(quant_images[image], "suv")
            check_same_grid(hc, quant_vol)
            quant = quant_vol.data
        metrics = evaluate_case(hc.data, references["lesion"].data, references["organs"].data,
                                hc.voxel_volume_ml, denoised=pred.get("denoised"),
                                lesion_pred=pred.get("lesion"), organs_pred=pred.get("organs"),
                                quant_image=quant, lesion_match=lesion_match, body=body,
                                nrmse_whole=nrmse_whole)
        rows.append({"model": model, "site": site, "subject": subject, "level": image.split("_r")[0],
                     "realization": realization, "count_percent": percent,
                     "clinical_percent": clinical_percent(percent, standard_count_percent), **metrics})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def read_metrics(path: str | Path) -> pd.DataFrame:
    """A metrics TSV written by `amdiff evaluate`/`collect`, with its columns checked and at
    least one row (`evaluate` writes one per image, so an empty table is a broken input)."""
    path = Path(path)
    check_input_file(path, "metrics table")
    try:
        df = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a readable metrics table ({type(exc).__name__})") from None
    df = validate_metrics(df, path)
    if df.empty:
        raise InputError(path, "metrics table holds no rows")
    return df


def validate_metrics(df: pd.DataFrame, source) -> pd.DataFrame:
    """Every contract column present and one row per (model, site, subject, level, realization)."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputError(source, f"metrics table lacks column(s) {', '.join(missing[:5])}")
    duplicated = df.duplicated(["model", *PAIR_KEYS])
    if duplicated.any():
        row = df[duplicated].iloc[0]
        raise InputError(source, f"duplicate row for {row.model} {row.site} {row.subject} {row.level}")
    return df[list(COLUMNS)]
