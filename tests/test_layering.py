"""The package's floors: a module imports only from floors below its own (or its own package).

This list is the one written record of the order; README ("Layout") describes the rooms. A
new package or top-level module must be placed on a floor here, or this test fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "amdiff"

FLOORS = (
    ("errors",),
    ("contracts", "levels", "joblog", "resources", "__init__"),   # data contracts, logging
    ("io",),                                                      # files, images, manifests
    ("config", "plotting", "physics"),                            # settings; figures; scanner model
    ("phantom", "labels", "listmode", "diffusion", "losses"),     # cohort data, list-mode, schedules
    ("recon", "data", "models"),                                  # reconstruction, patches, networks
    ("train", "infer", "qc", "evaluate"),                         # training, inference, reports
    ("provenance", "config_table"),
    ("commands",),                                                # the verbs, one module per stage
    ("cli",),                                                     # the command line
    ("__main__",),                                                # python -m amdiff
)
FLOOR = {unit: level for level, units in enumerate(FLOORS) for unit in units}


def _unit(module: str) -> str:
    """amdiff.recon.osem -> recon; amdiff.cli -> cli; amdiff -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    """Every amdiff module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "amdiff":
                found |= {f"amdiff.{alias.name}" for alias in node.names}
            elif node.module.startswith("amdiff."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("amdiff.")}
    return found


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_module_imports_only_from_lower_floors():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _unit(_module(path))
        assert source in FLOOR, f"{path.relative_to(PACKAGE.parent)}: '{source}' is on no floor of FLOORS"
        for target in sorted(_imports(path)):
            unit = _unit(target)
            if unit == "__version__":     # from amdiff import __version__
                unit = "__init__"
            if unit != source and FLOOR.get(unit, len(FLOORS)) >= FLOOR[source]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports {target} "
                              f"(floor {FLOOR.get(unit)} >= its own {FLOOR[source]})")
    assert upward == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from amdiff.commands.train import train\n    import amdiff.cli\n")
    assert _imports(probe) == {"amdiff.commands.train", "amdiff.cli"}
    assert FLOOR[_unit("amdiff.commands.train")] > FLOOR[_unit("amdiff.io.nifti")]


def test_the_learning_verbs_build_every_network_without_torchvision():
    # train/predict/params mark torchvision absent so that `import monai` skips torch._dynamo;
    # every network and the sliding-window inferer must still build and run
    import subprocess
    import sys

    code = """
import sys
from amdiff.commands.args import without_torchvision
without_torchvision()
import torch
from amdiff.infer.predict import predict_baseline
from amdiff.models.amdiff import AMDiff
from amdiff.models.baselines import NAMES, SEGMENTERS, get
for name in NAMES:
    module = get(name)
    model = module.build(**module.DEMO)
    if type(model).forward is not torch.nn.Module.forward:   # Med-DDPM samples instead
        with torch.no_grad():
            model.eval()(torch.rand(1, 2 if name in SEGMENTERS else 1, 64, 64, 64))
AMDiff("amdiff", denoiser={"channels": (4, 8, 8, 8), "norm_groups": 4, "attention_heads_channels": 8},
       revision={"hidden": 4, "n_layers": 2}, segmenter={"width": 4}, timesteps=20)
assert "torch._dynamo" not in sys.modules, "torch._dynamo was imported"
assert sys.modules["torchvision"] is None
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("ok")
