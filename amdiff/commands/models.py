"""The params verb: parameter counts of AMDiff's networks and the comparison models at paper size."""

from __future__ import annotations

from pathlib import Path

from amdiff.commands.args import without_torchvision
from amdiff.errors import InputError


def register(sub) -> None:
    p = sub.add_parser("params", help="parameter counts of every model at paper size")
    p.add_argument("--config", default=None, help="config with a models section (default: config/paper.yaml)")
    p.set_defaults(handler=params)


def _workflow_paper_config() -> Path:
    """config/paper.yaml of the workflow checkout this package runs from; an installed package
    has none, so the user names the config."""
    path = Path(__file__).resolve().parents[2] / "config" / "paper.yaml"
    if not path.is_file():
        raise InputError("--config", "no config/paper.yaml next to this installation of amdiff: "
                                     "name the config to count (--config config/paper.yaml)")
    return path


def params(args) -> None:
    """Print parameter counts at paper size: AMDiff's networks and variants, then the baselines."""
    without_torchvision()
    import importlib

    from amdiff.config import load_config, require_sections
    from amdiff.contracts import COMPARISON_MODELS, VARIANTS
    from amdiff.models.amdiff import build_model
    from amdiff.models.params import count_parameters

    config = load_config(args.config or _workflow_paper_config())
    require_sections(config, args.config or "config/paper.yaml", ("models", "diffusion"))
    rows = []
    for variant in VARIANTS:
        model = build_model(variant, config)
        parts = {"denoiser": model.denoiser, "revision": model.revision, "segmenter": model.segmenter}
        detail = ", ".join(f"{k} {count_parameters(v) / 1e6:.2f} M" for k, v in parts.items() if v is not None)
        rows.append((variant, count_parameters(model), detail))
    for name in (n for n in COMPARISON_MODELS if n != "med_ddpm"):   # med_ddpm: the AMDiff module above
        try:
            module = importlib.import_module(f"amdiff.models.baselines.{name}")
        except ImportError as exc:
            rows.append((name, None, f"not available ({exc})"))
            continue
        source = module.publication.split(";")[0]
        rows.append((name, count_parameters(module.build(**module.PAPER)),
                     source if len(source) <= 90 else source[:87] + "..."))
    width = max(len(r[0]) for r in rows)
    for name, n, detail in rows:
        count = f"{n / 1e6:8.2f} M" if n is not None else "       -  "
        print(f"{name:<{width}}  {count}  {detail}")
