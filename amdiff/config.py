"""Load and validate the workflow configuration; derive the subject list.

Validation gives one line naming the offending key, e.g.
``config/config.yaml: sites.mct.recon: unknown key 'iteratons'``.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import jsonschema
import yaml

from amdiff.contracts import SPLITS, template_fields
from amdiff.errors import InputError
from amdiff.io.files import check_input_file

# Package data (pyproject.toml), so an installed package validates configs from any folder.
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"
# One float32 image of this many voxels is 8 GB; the workflow holds several per job.
MAX_VOXELS = 2_000_000_000


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


def _fill_properties(validator, properties, instance, schema):
    """jsonschema's ``properties`` check, after setting each absent property that has a default."""
    if validator.is_type(instance, "object"):
        for name, subschema in properties.items():
            if "default" in subschema and name not in instance:
                instance[name] = copy.deepcopy(subschema["default"])
    yield from jsonschema.Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, schema)


# Validation that walks the schema like the plain validator and fills defaults on its way down, so
# a section set to its default ({}) gets its own keys' defaults too.
_DefaultFillingValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"properties": _fill_properties})


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def schema_default(key: str):
    """The schema's default of a dotted config key, e.g. ``evaluation.nrmse_whole`` or
    ``sites.*.acquisition.standard_count_percent`` (``*``: any site); a copy. The one home of
    each default: the CLI's and the library's defaults for config keys read it from here."""
    schema = _schema()
    node = schema
    for part in key.split("."):
        node = _resolved(node, schema)
        node = node["additionalProperties"] if part == "*" else node["properties"][part]
    node = _resolved(node, schema)
    if "default" not in node:
        raise KeyError(f"config key {key} has no default in {SCHEMA_PATH.name}")
    return copy.deepcopy(node["default"])


def _resolved(node: dict, schema: dict) -> dict:
    """A subschema with its local $ref merged in (the node's own keywords win)."""
    if "$ref" in node:
        return {**schema["$defs"][node["$ref"].split("/")[-1]], **node}
    return node


def fill_defaults(config: dict, schema: dict | None = None) -> dict:
    """Set every key the config leaves out to its schema ``default``, in place; return the config.

    The schema is the one home of the defaults (config/README.md lists them): code reads
    ``config[key]`` after this, not ``config.get(key, literal)``. Call it on a valid config only.
    """
    schema = schema if schema is not None else _schema()
    for _ in _DefaultFillingValidator(schema).iter_errors(config):
        pass
    return config


def validate_config(config: dict, source: str = "config") -> dict:
    """Validate against amdiff/schemas/config.schema.yaml plus the cross-key rules, fill the schema's
    defaults in (in place) and return the config."""
    schema = _schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise InputError(source, _one_line(errors[0]))
    fill_defaults(config, schema)
    for site, cfg in config["sites"].items():
        _check_site(site, cfg, source)
    _check_train_sites(config, source)
    # windows first: a window other than the training patch is the more basic mistake
    _check_windows(config, source)
    _check_patch_divisors(config, source)
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


def _check_recon_engine(site: str, recon: dict, source: str) -> None:
    """An external engine needs a command whose placeholders are known (checked before any job)."""
    where = f"{source}: sites.{site}"
    if recon["engine"] == "external":
        if not recon.get("command"):
            raise InputError(where, "recon.engine is external, so recon.command (the engine's command line) is required")
        template_fields(recon["command"], where)
    elif recon.get("command"):
        raise InputError(where, "recon.command is set but recon.engine is not external; set engine: external")


def _check_site(site: str, cfg: dict, source: str) -> None:
    _check_recon_engine(site, cfg["recon"], source)
    sc, im = cfg["scanner"], cfg["image"]
    if sc["fov_radius_mm"] >= sc["radius_mm"]:
        raise InputError(source, f"sites.{site}.scanner: fov_radius_mm must be below radius_mm")
    if sc["max_ring_difference"] >= sc["n_rings"]:
        raise InputError(source, f"sites.{site}.scanner: max_ring_difference must be below n_rings")
    voxels = math.prod(im["shape"])
    if voxels > MAX_VOXELS:
        raise InputError(source, f"sites.{site}.image.shape: {list(im['shape'])} is {voxels:.3g} voxels, "
                                 f"above the limit of {MAX_VOXELS:.0e} ({MAX_VOXELS * 4 / 1e9:.0f} GB "
                                 "per float32 image)")
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


# Sides of a training patch (= inference window) must be multiples of what each network halves
# them by. The numbers are the model modules' own (tests/test_config_yaml.py compares them); they
# are repeated here so that validating a config never imports torch.
_BASELINE_DIVISORS = {
    "med_ddpm": 8,             # AMDiff's DenoiserUNet at both sizes: 4 levels, 3 halvings
    "spach_transformer": 8,    # spach_transformer.SIDE_MULTIPLE: three halvings
    "swin_unetr": 32,          # swin_unetr.DIVISOR: patch embedding (2) and four patch merges
    "nnmamba": 16,             # nnmamba.DIVISOR: stem stride 2 and three stride-2 stages
}
_LEQMOD_GAN_LEVELS = 4         # leqmod_gan DEMO/PAPER enc_channels: 2^4 = 16
_MEDSAM3D_PATCH = {"demo": 8, "paper": 16}   # medsam3d DEMO/PAPER ViT patch_size
_SEGMENTER_DIVISOR = 8         # amdiff.models.segmenter: 2**N_LEVELS


def patch_divisors(config: dict) -> dict[str, int]:
    """{model: the number every patch side must be a multiple of} for the models the config trains
    (models.variants and baselines.names; overrides of leqmod_gan.enc_channels and
    medsam3d.patch_size included)."""
    divisors = {}
    models = config.get("models") or {}
    for variant in models.get("variants") or []:
        levels = len((models.get("denoiser") or {}).get("channels") or [0] * 4)
        divisors[variant] = math.lcm(2 ** (levels - 1), _SEGMENTER_DIVISOR)
    baselines = config.get("baselines") or {}
    overrides = baselines.get("overrides") or {}
    for name in baselines.get("names") or []:
        own = overrides.get(name) if isinstance(overrides.get(name), dict) else {}
        if name == "leqmod_gan":
            enc = own.get("enc_channels")
            divisors[name] = 2 ** (len(enc) if isinstance(enc, (list, tuple)) and enc else _LEQMOD_GAN_LEVELS)
        elif name == "medsam3d":
            patch = own.get("patch_size", _MEDSAM3D_PATCH.get(baselines.get("size"), 16))
            if isinstance(patch, int) and not isinstance(patch, bool) and patch > 0:
                divisors[name] = patch
        elif name in _BASELINE_DIVISORS:
            divisors[name] = _BASELINE_DIVISORS[name]
    return divisors


def _check_patch_divisors(config: dict, source: str) -> None:
    """training.patch_size and inference.patch_size: every side a multiple of each configured
    model's divisor (patch_divisors); the message names the models a side fails."""
    divisors = patch_divisors(config)
    for key in ("training", "inference"):
        sides = (config.get(key) or {}).get("patch_size")
        if sides is None:
            continue
        failing = {m: d for m, d in divisors.items() if any(s % d for s in sides)}
        if failing:
            by_divisor: dict[int, list[str]] = {}
            for model, d in failing.items():
                by_divisor.setdefault(d, []).append(model)
            needs = "; ".join(f"{', '.join(names)}: {d}" for d, names in sorted(by_divisor.items()))
            raise InputError(source, f"{key}.patch_size: sides {list(sides)} must be multiples of "
                                     f"{math.lcm(*divisors.values())} for the configured models ({needs})")


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _duplicate_keys(loader: yaml.SafeLoader, node: yaml.Node, where: tuple = (),
                    seen: set | None = None) -> Iterator[tuple[str, int, int]]:
    """(dotted key, line, line of its first occurrence) of every key repeated within one mapping
    of the composed document ``node``; lines count from 1."""
    seen = set() if seen is None else seen
    if id(node) in seen:   # an alias repeats a node already walked (or one that contains itself)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                # "<<: *anchor" merges keys that the mapping may override: no duplicate
                yield from _duplicate_keys(loader, value_node, where, seen)
                continue
            name = "?"
            if isinstance(key_node, yaml.ScalarNode):   # other keys: the constructor refuses them
                key = loader.construct_object(key_node)
                name = str(key)
                if key in first:
                    yield ".".join((*where, name)), key_node.start_mark.line + 1, first[key]
                first.setdefault(key, key_node.start_mark.line + 1)
            yield from _duplicate_keys(loader, value_node, (*where, name), seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(loader, item, (*where, str(index)), seen)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: the line and column where the parser stopped, and why."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return f"not valid YAML ({problem})"
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None:
        problem += f" ({context} at line {context_mark.line + 1})"
    elif context:
        problem += f" ({context})"
    return f"line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {problem}"


def read_config(path: str | os.PathLike) -> dict:
    """A YAML config file as a dict, not validated (e.g. a snapshot's config to compare).

    Refuses, naming the line: YAML syntax errors, and a key given twice in one mapping (YAML
    loaders otherwise keep the last value silently).
    """
    path = Path(path)
    check_input_file(path, "config file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InputError(path, f"cannot read the config file ({exc.strerror})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            for key, line, first in _duplicate_keys(loader, node):
                raise InputError(path, f"line {line}: duplicate key {key!r} (first given at line {first}; "
                                       "YAML would keep the last value silently)")
        config = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise InputError(path, _yaml_problem(exc)) from None
    finally:
        loader.dispose()
    if not isinstance(config, dict):
        raise InputError(path, "config must be a YAML mapping")
    return config


def offending_key(problem: str) -> str:
    """The dotted config key a validation message of ``validate_config`` is about ("" for the top
    level): its messages start with the key, an unknown key is named after it."""
    where, _, rest = problem.partition(": ")
    where = "" if where == "<top level>" else where
    unknown = re.match(r"unknown key '([^']+)'", rest)
    if unknown:
        return f"{where}.{unknown.group(1)}" if where else unknown.group(1)
    return where


def check_workflow_config(config: dict, configfiles, overrides=None) -> dict:
    """Validate the config Snakemake merged from ``configfiles`` and ``--config`` ``overrides``.

    Each config file is read first (``read_config``: syntax errors and duplicate keys with their
    line). A validation error is blamed on where its key came from: ``--config KEY`` when the
    command line set that key (or a key above or below it), else the config files, so that a
    typo on the command line is not reported as a fault of config/config.yaml.
    """
    for path in configfiles:
        read_config(path)
    files = " ".join(map(str, configfiles)) or "config"
    try:
        return validate_config(config, files)
    except InputError as err:
        key = offending_key(err.problem)
        given = sorted(_dotted_keys(overrides or {}))
        blamed = [g for g in given if key and (g == key or key.startswith(g + ".") or g.startswith(key + "."))]
        if not blamed:
            raise
        raise InputError(f"--config {max(blamed, key=len)}", err.problem) from None


def _dotted_keys(tree, prefix: str = ""):
    for key, value in dict(tree).items():
        name = f"{prefix}.{key}" if prefix else str(key)
        yield name
        if isinstance(value, Mapping):
            yield from _dotted_keys(value, name)


# training keys that do not change the weights, so changing them resumes rather than retrains
# (amdiff.train) and re-runs no job (the training scopes of the workflow's config files): which
# sites a model predicts (its own site is in the fingerprint), where the job runs and on how many
# threads and processes, which epochs are also kept. Device, threads and data-parallel processes
# change float rounding, not the model being trained; a job moved from CPU to GPU (or given more
# cores or GPUs) should continue, not start over.
NOT_WEIGHTS = ("train_sites", "device", "threads", "gpus", "checkpoint_every_epochs")


def weight_settings(section: dict, drop=()) -> dict:
    """``section`` without the keys that do not change the weights (and without ``drop``)."""
    return {k: v for k, v in (section or {}).items() if k not in NOT_WEIGHTS and k not in drop}


def load_config(path: str | os.PathLike) -> dict:
    """A YAML config file, validated against the schema and the cross-key rules."""
    return validate_config(read_config(path), str(Path(path)))


def site_config(config: dict, site: str, source) -> dict:
    """``sites.<site>`` of a config; an unconfigured site is one-line InputError naming ``source``."""
    if site not in config["sites"]:
        raise InputError(source, f"site {site!r} is not configured (sites: {', '.join(config['sites'])})")
    return config["sites"][site]


def require_sections(config: dict, source, sections) -> None:
    """One-line InputError naming ``source`` when the config lacks a section a command needs."""
    missing = [s for s in sections if s not in config]
    if missing:
        raise InputError(source, f"config lacks the section(s) {', '.join(missing)} needed here")


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
    return float(site_acquisition(site_cfg, split)["standard_count_percent"])


def run_kind(config: dict) -> str:
    """What a run is (config ``run_kind``): ``demo``, an untrained smoke test whose outputs say
    so; ``study`` or ``paper``, trained runs. Unset: ``study``."""
    return config["run_kind"]
