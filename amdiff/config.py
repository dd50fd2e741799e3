"""Load and validate the workflow configuration; derive the subject list.

Validation gives one line naming the offending key, e.g.
``config/config.yaml: sites.mct.recon: unknown key 'iteratons'``.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import jsonschema
import yaml

from amdiff.errors import InputError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "config" / "schema.yaml"
SPLITS = ("train", "val", "test")


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _one_line(error: jsonschema.ValidationError) -> str:
    where = _key_path(error)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"{where}: unknown key {', '.join(repr(e) for e in extra)}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "propertyNames":
        return f"{where}: {error.message}"
    return f"{where}: {error.message}"


def validate_config(config: dict, source: str = "config") -> dict:
    """Validate against config/schema.yaml plus the cross-key rules; return the config."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise InputError(source, _one_line(errors[0]))
    for site, cfg in config["sites"].items():
        _check_site(site, cfg, source)
    _check_train_sites(config, source)
    _check_windows(config, source)
    if config["cohort"]["source"] == "manifest" and not config["cohort"].get("manifest"):
        raise InputError(source, "cohort.manifest: required when cohort.source is 'manifest'")
    _check_seed_replicates(config, source)
    return config


def _check_seed_replicates(config: dict, source: str) -> None:
    trained = list((config.get("models") or {}).get("variants", []))
    trained += [b for b in (config.get("baselines") or {}).get("names", []) if b == "med_ddpm"]
    for model in (config.get("seed_replicates") or {}).get("models", []):
        if model not in trained:
            raise InputError(source, f"seed_replicates.models: {model!r} is not trained by this config "
                                     f"(models.variants, or med_ddpm in baselines.names)")


def _check_site(site: str, cfg: dict, source: str) -> None:
    sc, im = cfg["scanner"], cfg["image"]
    if sc["fov_radius_mm"] >= sc["radius_mm"]:
        raise InputError(source, f"sites.{site}.scanner: fov_radius_mm must be below radius_mm")
    if sc["max_ring_difference"] >= sc["n_rings"]:
        raise InputError(source, f"sites.{site}.scanner: max_ring_difference must be below n_rings")
    axial = im["shape"][2] * im["voxel_size_mm"][2]
    if axial > sc["n_rings"] * sc["ring_pitch_mm"] + 1e-6:
        raise InputError(source, f"sites.{site}: image axial length {axial:.0f} mm exceeds the scanner's "
                                 f"{sc['n_rings'] * sc['ring_pitch_mm']:.0f} mm")
    for split in SPLITS:
        if cfg["split"][split] > 0 and not cfg["count_levels"].get(split):
            raise InputError(source, f"sites.{site}.count_levels.{split}: required, the split has subjects")
    for split, levels in cfg["count_levels"].items():
        if sum(levels) * cfg["realizations"] > 100 + 1e-9 and cfg["realizations"] > 1:
            # Realizations of one level must stay disjoint: f * R <= 1 for every level.
            too_big = [p for p in levels if p * cfg["realizations"] > 100]
            if too_big:
                raise InputError(source, f"sites.{site}.count_levels.{split}: {too_big} % x "
                                         f"{cfg['realizations']} realizations exceed 100 %")


def _check_train_sites(config: dict, source: str) -> None:
    """training.train_sites names configured sites only, as keys and as predicted sites."""
    sites = config["sites"]
    for trained_on, predicts in config.get("training", {}).get("train_sites", {}).items():
        for site, where in [(trained_on, "training.train_sites")] + \
                [(s, f"training.train_sites.{trained_on}") for s in predicts]:
            if site not in sites:
                raise InputError(source, f"{where}: {site!r} is not a configured site "
                                         f"(sites: {', '.join(sites)})")


def _check_windows(config: dict, source: str) -> None:
    """Inference windows are the training patch size: the networks with instance/group
    statistics or a Mamba scan would see other statistics on other window sizes."""
    train, infer = config.get("training", {}), config.get("inference", {})
    if "patch_size" in train and "patch_size" in infer and list(train["patch_size"]) != list(infer["patch_size"]):
        raise InputError(source, f"inference.patch_size {list(infer['patch_size'])} must equal "
                                 f"training.patch_size {list(train['patch_size'])} (networks with "
                                 "normalisation layers see different statistics on other window sizes)")


def read_config(path: str | os.PathLike) -> dict:
    """A YAML config file as a dict, not validated (e.g. a snapshot's config to compare)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "config file does not exist")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise InputError(path, "config must be a YAML mapping")
    return config


def load_config(path: str | os.PathLike) -> dict:
    """A YAML config file, validated against the schema and the cross-key rules."""
    return validate_config(read_config(path), str(Path(path)))


# A seed replicate of model M is the model "M_seedK" (K = 1, 2, ...): the same variant and
# settings, trained with the seed derived from that name instead of from "M".
_REPLICATE = re.compile(r"^(?P<base>.+)_seed(?P<k>[1-9][0-9]*)$")


def seed_replicates(config: dict) -> dict[str, list[str]]:
    """{model: [its replicate names]} from ``seed_replicates`` (count includes the model itself)."""
    section = config.get("seed_replicates") or {}
    count = int(section.get("count", 1))
    return {m: [f"{m}_seed{k}" for k in range(1, count)] for m in section.get("models", [])}


def replicate_base(name: str) -> str:
    """The model a seed replicate repeats ("amdiff_seed1" -> "amdiff"); other names unchanged."""
    match = _REPLICATE.match(name)
    return match["base"] if match else name


def derived_seed(base: int, *keys: str) -> int:
    """A stable per-item seed: same base and keys give the same seed on every machine."""
    return (int(base) * 1_000_003 + zlib.crc32("/".join(keys).encode())) % (2**32)


def phantom_subjects(config: dict) -> list[dict]:
    """Subjects of the synthetic cohort: ``{site}{index:03d}``, splits assigned in order."""
    subjects = []
    for site, cfg in config["sites"].items():
        index = 0
        for split in SPLITS:
            for _ in range(cfg["split"][split]):
                index += 1
                subjects.append({"site": site, "subject": f"{site}{index:03d}", "split": split})
    return subjects


def count_levels(config: dict, site: str, split: str) -> list[float]:
    return list(config["sites"][site]["count_levels"].get(split, []))


def site_acquisition(site_cfg: dict, split: str | None) -> dict:
    """The acquisition of one subject of a site: ``acquisition`` with the subject's split's
    ``acquisition_by_split`` entry merged over it (e.g. the paper's mCT Group II test scans,
    a 30-min multi-pass reference at their own dose). ``split`` None: the site's acquisition."""
    acq = dict(site_cfg["acquisition"])
    if split is not None:
        acq.update(site_cfg.get("acquisition_by_split", {}).get(split, {}))
    return acq


def standard_count_percent(site_cfg: dict, split: str | None) -> float:
    """The share (percent) of a subject's full list that the site's standard clinical scan
    holds: ``acquisition.standard_count_percent`` with the split's ``acquisition_by_split``
    entry over it; 100 (the full list is the clinical scan) where unset."""
    return float(site_acquisition(site_cfg, split).get("standard_count_percent", 100.0))


def run_kind(config: dict) -> str:
    """What a run is (config ``run_kind``): ``demo``, an untrained smoke test whose outputs say
    so; ``study`` or ``paper``, trained runs. Unset: ``study``."""
    return config.get("run_kind", "study")
