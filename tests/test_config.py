import copy
import inspect

import pytest

from amdiff.config import (count_levels, derived_seed, fill_defaults, load_config, phantom_subjects,
                           site_acquisition, standard_count_percent, validate_config)
from amdiff.errors import InputError


@pytest.fixture(scope="module")
def demo(repo):
    return load_config(repo / "config" / "config.yaml")


def test_demo_and_paper_configs_are_valid(repo, demo):
    paper = load_config(repo / "config" / "paper.yaml")
    assert set(demo["sites"]) == set(paper["sites"]) == {"mct", "vision", "uexplorer"}
    # Table 1: splits and OSEM settings of the paper
    assert paper["sites"]["mct"]["split"] == {"train": 175, "val": 20, "test": 29}
    assert paper["sites"]["uexplorer"]["split"] == {"train": 3, "val": 2, "test": 5}
    assert paper["sites"]["vision"]["recon"]["subsets"] == 5
    assert paper["sites"]["uexplorer"]["recon"]["iterations"] == 4
    assert paper["sites"]["uexplorer"]["recon"]["postfilter_fwhm_mm"] == 0


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["sites"]["mct"]["recon"].update(iteratons=2), "sites.mct.recon: unknown key 'iteratons'"),
    (lambda c: c["sites"]["mct"]["recon"].update(iterations="two"), "sites.mct.recon.iterations: 'two' is not of type 'integer'"),
    (lambda c: c.update(sedd=1), "<top level>: unknown key 'sedd'"),
    (lambda c: c["labels"].update(method="nnunet"), "labels.method: 'nnunet' is not one of"),
    (lambda c: c["sites"]["mct"]["scanner"].update(fov_radius_mm=400.0), "fov_radius_mm must be below radius_mm"),
    (lambda c: c["sites"]["mct"]["count_levels"].pop("test"), "sites.mct.count_levels.test: required"),
    (lambda c: c["sites"]["mct"]["count_levels"].update(test=[0]), "sites.mct.count_levels.test.0"),
    # per-split acquisition: protocol keys only, real split names, valid values
    (lambda c: c["sites"]["mct"].update(acquisition_by_split={"test": {"psf_fwhm_mm": 3.0}}),
     "sites.mct.acquisition_by_split.test: unknown key 'psf_fwhm_mm'"),
    (lambda c: c["sites"]["mct"].update(acquisition_by_split={"tset": {"duration_s": 1800}}),
     "sites.mct.acquisition_by_split: unknown key 'tset'"),
    (lambda c: c["sites"]["mct"].update(acquisition_by_split={"test": {"duration_s": 0}}),
     "sites.mct.acquisition_by_split.test.duration_s: 0 is less than or equal to the minimum"),
    (lambda c: c["sites"]["mct"].update(acquisition_by_split={"test": {}}),
     "sites.mct.acquisition_by_split.test: {} should be non-empty"),
    # the standard count is a percent of the full list
    (lambda c: c["sites"]["vision"]["acquisition"].update(standard_count_percent=0),
     "sites.vision.acquisition.standard_count_percent: 0 is less than or equal to the minimum"),
    (lambda c: c["sites"]["mct"].update(acquisition_by_split={"test": {"standard_count_percent": 150}}),
     "sites.mct.acquisition_by_split.test.standard_count_percent: 150 is greater than the maximum"),
])
def test_bad_config_gives_one_line_naming_the_key(demo, mutate, expected):
    assert_one_line_config_error(demo, mutate, expected)


def assert_one_line_config_error(config: dict, mutate, expected: str) -> None:
    """``mutate`` applied to a copy of ``config`` fails validation with one line holding ``expected``."""
    bad = copy.deepcopy(config)
    mutate(bad)
    with pytest.raises(InputError) as info:
        validate_config(bad, "my.yaml")
    message = str(info.value)
    assert message.startswith("my.yaml: ") and expected in message, message
    assert "\n" not in message


def test_paper_mct_test_group_is_the_group_ii_reference(repo):
    """Table 1: Group II (test) 334.5 +- 32.1 MBq, 30 min of passes; Group I 256.3 +- 16.2, 5 min."""
    mct = load_config(repo / "config" / "paper.yaml")["sites"]["mct"]
    test, train = site_acquisition(mct, "test"), site_acquisition(mct, "train")
    assert (test["dose_mbq"], test["duration_s"]) == ([334.5, 32.1], 1800)
    assert (train["dose_mbq"], train["duration_s"]) == ([256.3, 16.2], 300)
    assert site_acquisition(mct, "val") == train == site_acquisition(mct, None) == mct["acquisition"]
    # the scanner's physics is the site's for every split; the protocol (dose, time, standard) differs
    protocol = ("dose_mbq", "duration_s", "standard_count_percent")
    assert {k: v for k, v in test.items() if k not in protocol} == \
        {k: v for k, v in train.items() if k not in protocol}


def test_standard_count_is_a_percent_of_each_splits_full_list(repo, demo):
    """Group I's and uExplorer's lists are the clinical scan (100 %); Group II's and Vision's are
    30-min references whose clinical scan is one 5-min pass, 16.7 % (Vision's count level)."""
    sites = load_config(repo / "config" / "paper.yaml")["sites"]
    assert standard_count_percent(sites["mct"], "train") == standard_count_percent(sites["mct"], "val") == 100
    assert standard_count_percent(sites["mct"], "test") == 16.7
    vision_level = sites["vision"]["count_levels"]["test"][0]
    assert standard_count_percent(sites["vision"], "test") == 16.7 == vision_level
    assert standard_count_percent(sites["uexplorer"], "test") == 100
    demo_sites = demo["sites"]
    demo_level = demo_sites["vision"]["count_levels"]["test"][0]
    assert standard_count_percent(demo_sites["vision"], "test") == demo_level == 16.7
    assert standard_count_percent(demo_sites["mct"], "test") == 100.0   # unset: the default


def test_unreadable_config_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(InputError, match="mapping"):
        load_config(bad)


def test_subjects_follow_the_split_sizes(demo):
    subjects = phantom_subjects(demo)
    for site, cfg in demo["sites"].items():
        mine = [s for s in subjects if s["site"] == site]
        assert len(mine) == sum(cfg["split"].values())
        for split in ("train", "val", "test"):
            assert sum(s["split"] == split for s in mine) == cfg["split"][split]
    assert len({s["subject"] for s in subjects}) == len(subjects)
    assert count_levels(demo, "mct", "test") == [5, 40]


def test_derived_seeds_are_stable_and_distinct():
    assert derived_seed(1, "a", "b") == derived_seed(1, "a", "b")
    seeds = {derived_seed(1, "phantom", "mct", f"mct{i:03d}") for i in range(200)}
    assert len(seeds) == 200
    assert derived_seed(1, "a") != derived_seed(2, "a")
    # documented constant: the seed derivation must not drift between releases
    assert derived_seed(0, "x") == 2363233923


def test_a_site_may_have_any_identifier_as_its_name(demo):
    """Users add a site per scanner: any lower-case identifier is a site name."""
    own = copy.deepcopy(demo)
    own["sites"]["lab_scanner2"] = own["sites"].pop("mct")
    own["training"]["train_sites"] = {"lab_scanner2": ["lab_scanner2", "vision"]}
    validate_config(own, "my.yaml")
    assert_one_line_config_error(demo, lambda c: c["sites"].update({"PET-CT 2": c["sites"]["mct"]}),
                                 "'PET-CT 2' does not match")


def _schema():
    import yaml

    from amdiff.config import SCHEMA_PATH
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _defaults(node, schema, where=""):
    """(dotted key, subschema) of every property with a default, $refs followed."""
    if "$ref" in node:
        node = {**schema["$defs"][node["$ref"].split("/")[-1]], **node}
    for name, sub in node.get("properties", {}).items():
        if "default" in sub:
            yield f"{where}{name}", sub
        yield from _defaults(sub, schema, f"{where}{name}.")
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        yield from _defaults(extra, schema, f"{where}*.")


def test_every_schema_default_is_valid_for_its_own_key():
    import jsonschema

    schema = _schema()
    found = list(_defaults(schema, schema))
    assert len(found) > 30
    for key, sub in found:
        checked = {**sub, "$defs": schema["$defs"]}
        errors = list(jsonschema.Draft202012Validator(checked).iter_errors(sub["default"]))
        assert not errors, f"{key}: default {sub['default']!r} fails its own schema: {errors[0].message}"


def test_left_out_keys_get_the_schema_default_and_given_keys_stay(demo):
    config = copy.deepcopy(demo)
    for section in ("evaluation", "phantom", "reports_dir"):
        config.pop(section, None)
    config["training"].pop("threads", None)
    config["training"]["lesion_fraction"] = 0.25
    del config["models"]["segmenter"]["width"]
    config["sites"]["mct"]["acquisition"].pop("standard_count_percent", None)
    filled = validate_config(config)
    assert filled is config
    # a section left out becomes its default ({}), whose own keys are then filled too
    assert config["evaluation"]["lesion_match"] == {"metric": "iou", "threshold": 0.1}
    assert config["evaluation"]["gaussian_filter"]["fwhm_mm_grid"] == [0, 2, 4, 6, 8, 10, 12]
    assert config["phantom"] == {"lesions_per_subject": [2, 6], "min_lesion_volume_ml": 0.05}
    assert config["reports_dir"] == "reports"
    assert config["training"]["threads"] == 1
    assert config["training"]["lesion_fraction"] == 0.25
    assert config["models"]["segmenter"]["width"] == 16
    assert config["sites"]["mct"]["acquisition"]["standard_count_percent"] == 100


def test_defaults_are_copies_and_never_fill_a_per_split_override(repo, demo):
    config = copy.deepcopy(demo)
    config["sites"]["mct"]["acquisition"]["standard_count_percent"] = 50
    config["sites"]["mct"]["acquisition_by_split"] = {"test": {"duration_s": 1800}}
    validate_config(config)
    # the site's standard count has a default, a per-split override none: filling one in would
    # replace the site's 50 % by 100 % for the test subjects
    assert config["sites"]["mct"]["acquisition_by_split"] == {"test": {"duration_s": 1800}}
    assert standard_count_percent(config["sites"]["mct"], "test") == 50
    a, b = load_config(repo / "config" / "config.yaml"), load_config(repo / "config" / "config.yaml")
    a["evaluation"]["lesion_match"]["metric"] = "dice"
    assert b["evaluation"]["lesion_match"]["metric"] == "iou"
    assert fill_defaults({}, {"properties": {"g": {"default": [1]}}})["g"] is not fill_defaults(
        {}, {"properties": {"g": {"default": [1]}}})["g"]


def _parser_default(parser, command: str, option: str):
    sub = next(a for a in parser._actions if a.dest == "verb").choices[command]
    return next(a for a in sub._actions if option in a.option_strings).default


def _parser_choices(parser, command: str, option: str):
    sub = next(a for a in parser._actions if a.dest == "verb").choices[command]
    return tuple(next(a for a in sub._actions if option in a.option_strings).choices)


def test_cli_choices_mirror_the_library_and_the_schema():
    """The command line names the NRMSE readings and run kinds without importing their homes
    (building the parser stays fast and torch-free): they must be the same lists."""
    from amdiff.cli import build_parser
    from amdiff.config import _schema
    from amdiff.evaluate.metrics import NRMSE_WHOLE_READINGS

    parser = build_parser()
    for verb in ("evaluate", "fit-gaussian"):
        assert _parser_choices(parser, verb, "--nrmse-whole") == NRMSE_WHOLE_READINGS
    run_kinds = tuple(_schema()["properties"]["run_kind"]["enum"])
    for verb in ("tables", "figure-regression", "figure-slices", "figure-training", "study-checks"):
        assert _parser_choices(parser, verb, "--run-kind") == run_kinds


def test_cli_and_library_defaults_mirror_the_schema():
    """The schema is the home of every default; the CLI (kept free of the schema so that --help is
    fast) and the library functions repeat a few, and must say the same."""
    from amdiff.cli import build_parser
    from amdiff.config import schema_default
    from amdiff.evaluate.gaussian import DEFAULT_FWHM_GRID_MM
    from amdiff.evaluate.metrics import NRMSE_WHOLE_DEFAULT

    parser = build_parser()
    mirrors = [
        (_parser_default(parser, "study-checks", "--run-kind"), "run_kind"),
        (_parser_default(parser, "fit-gaussian", "--nrmse-whole"), "evaluation.nrmse_whole"),
        (_parser_default(parser, "evaluate", "--nrmse-whole"), "evaluation.nrmse_whole"),
        (NRMSE_WHOLE_DEFAULT, "evaluation.nrmse_whole"),
        (list(DEFAULT_FWHM_GRID_MM), "evaluation.gaussian_filter.fwhm_mm_grid"),
        (_parser_default(parser, "evaluate", "--lesion-match-metric"), "evaluation.lesion_match.metric"),
        (_parser_default(parser, "evaluate", "--lesion-match-threshold"), "evaluation.lesion_match.threshold"),
        (_parser_default(parser, "evaluate", "--standard-count-percent"),
         "sites.*.acquisition.standard_count_percent"),
        (_parser_default(parser, "labels", "--device"), "labels.totalsegmentator.device"),
    ]
    from amdiff.models.denoiser import DenoiserUNet
    from amdiff.models.revision import RevisionModule
    from amdiff.models.segmenter import DualBranchSegmenter
    from amdiff.phantom import DEFAULT_PARAMS

    for key in ("lesions_per_subject", "min_lesion_volume_ml"):
        mirrors.append((DEFAULT_PARAMS[key], f"phantom.{key}"))
    for network, section in ((DenoiserUNet, "denoiser"), (RevisionModule, "revision"),
                             (DualBranchSegmenter, "segmenter")):
        for name, parameter in inspect.signature(network).parameters.items():
            mirrors.append((parameter.default, f"models.{section}.{name}"))
    checked = set()
    for value, key in mirrors:
        try:
            expected = schema_default(key)
        except KeyError:
            assert key.startswith("models."), key   # a constructor argument the config leaves fixed
            continue
        assert value == expected, key
        checked.add(key)
    assert {"models.denoiser.norm_groups", "models.revision.hidden", "models.segmenter.width"} <= checked
    with pytest.raises(KeyError, match="seed has no default"):
        schema_default("seed")


def test_the_schema_names_the_variants_of_the_one_variant_table():
    from amdiff.contracts import ABLATIONS, VARIANTS

    properties = _schema()["properties"]
    assert properties["models"]["properties"]["variants"]["items"]["enum"] == [
        name for name in VARIANTS if name != "med_ddpm"]
    assert properties["seed_replicates"]["properties"]["models"]["items"]["enum"] == list(VARIANTS)
    assert ABLATIONS == tuple(name for name in VARIANTS if name not in ("amdiff", "med_ddpm"))
