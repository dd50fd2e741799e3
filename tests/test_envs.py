"""The conda environments (`--sdm conda`): one per rule family, each holding what its rules import.

Conda channels are not reachable here, so no environment is created in this test. Instead each
rule's `amdiff` verb is followed through the source: the imports of the verb's handler in its
amdiff/commands/ module and of that module's helpers it calls (lazy ones included), then, through every
amdiff module reached, the imports that loading that module runs. The third-party modules
reached are mapped to their distributions, which must all be in the rule's environment file,
at the version pyproject.toml pins. Not seen: a lazy import inside a library function (today
only TotalSegmentator's, in amdiff/labels/totalseg.py, and monai's attention block, whose
package the training env holds anyway); optional imports in `try: ... except ImportError`
are not required.
"""

import ast
import functools
import importlib.util
import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_pins() -> dict[str, str]:
    text = (REPO / "pyproject.toml").read_text()
    deps = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    return {normalise(name): version for name, version in re.findall(r'"([\w.-]+)==([^"]+)"', deps)}


def env_packages(path: Path) -> dict[str, str]:
    """pip requirements of an env file, {distribution: version}."""
    deps = yaml.safe_load(path.read_text())["dependencies"]
    pip = next((d["pip"] for d in deps if isinstance(d, dict) and "pip" in d), [])
    return {normalise(n): v for n, v in (req.split("==", 1) for req in pip)}


def rule_envs_and_verbs() -> dict[str, tuple[str, str]]:
    """{rule: (env file name, amdiff verb)} read from rules/*.smk."""
    found = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=rule \w+:)", smk.read_text()):
            head = re.match(r"rule (\w+):", block)
            if not head or "\n    run:\n" in block:   # run: code runs in Snakemake's own process
                continue
            env = re.search(r'conda:\s*\n\s*"\.\./envs/([\w-]+\.yaml)"', block)
            verb = re.search(r'"amdiff ([\w-]+)', block)
            assert env and verb, f"{smk.name}: rule {head.group(1)} lacks a conda env or an amdiff verb"
            found[head.group(1)] = (env.group(1), verb.group(1))
    return found


def _is_optional(node: ast.AST, parents: dict) -> bool:
    """An import inside `try:` whose handler catches ImportError or Exception: optional."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try):
            names = {getattr(h.type, "id", None) for h in node.handlers}
            if names & {"ImportError", "ModuleNotFoundError", "Exception", None}:
                return True
    return False


def _executed_on_import(tree: ast.AST):
    """The nodes of a module that run when it is imported: all but the bodies of functions."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if node is tree or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


def imported_names(tree: ast.AST, on_import_only: bool = False) -> set[str]:
    """Absolute module names imported under tree (optional imports left out); with
    ``on_import_only`` (tree a module) only those that importing the module runs."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    names = set()
    for node in (_executed_on_import(tree) if on_import_only else ast.walk(tree)):
        if _is_optional(node, parents):
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}   # submodules, if they are
    return names


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _command_modules() -> set[str]:
    return {f"amdiff.commands.{p.stem}" for p in (REPO / "amdiff" / "commands").glob("*.py")
            if p.stem not in ("__init__", "args")}


# The command line: building the parser imports every stage's command module (whose handlers
# import that stage's code lazily). A verb reaches only its own handler's imports: verb_modules.
DISPATCH = {"amdiff.cli", "amdiff.__main__", "amdiff.commands", *_command_modules()}


def third_party_modules(start: set[str]) -> set[str]:
    """Top-level third-party modules reached from the modules in ``start`` through amdiff's own."""
    seen, todo, outside = set(), [n for n in start if is_module(n)], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]  # its packages
        top = name.split(".")[0]
        if top != "amdiff":
            if top not in sys.stdlib_module_names:
                outside.add(top)
            continue
        origin = importlib.util.find_spec(name).origin
        tree = ast.parse(Path(origin).read_text())
        # amdiff's own lazy imports are followed too, except back into the command line (every
        # command module's handlers): verb_modules covers the verb's own handler
        own_lazy = {n for n in imported_names(tree) if n.split(".")[0] == "amdiff"} - DISPATCH
        for sub in imported_names(tree, on_import_only=True) | own_lazy:
            if is_module(sub) and sub not in DISPATCH:
                todo.append(sub)
    return outside


def verb_handler(verb: str):
    """The handler function the command line runs for ``verb``."""
    from amdiff.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "verb").choices
    assert verb in commands, f"amdiff has no verb {verb!r}"
    return commands[verb].get_default("handler")


def verb_modules(verb: str) -> set[str]:
    """Modules a verb imports: the module-level imports of the command line (cli, and every
    command module, which building the parser imports), and the imports of the verb's handler and
    of the helpers of its module that it calls."""
    handler = verb_handler(verb)
    source = Path(importlib.util.find_spec(handler.__module__).origin)
    tree = ast.parse(source.read_text())
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    todo, used = [handler.__name__], set()
    while todo:
        name = todo.pop()
        if name in used:
            continue
        used.add(name)
        todo += [n.id for n in ast.walk(functions[name]) if isinstance(n, ast.Name) and n.id in functions]
    modules = set()
    for module in ("amdiff.cli", "amdiff.commands", *_command_modules()):
        module_tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
        modules |= imported_names(module_tree, on_import_only=True)
    for name in used:
        modules |= imported_names(functions[name])
    return modules - DISPATCH


@functools.lru_cache(maxsize=None)
def _module_distributions() -> dict:
    return packages_distributions()


@functools.lru_cache(maxsize=None)
def verb_imports(verb: str) -> frozenset[str]:
    """Top-level third-party modules a verb imports."""
    return frozenset(third_party_modules(verb_modules(verb)))


def distributions(modules) -> set[str]:
    mapping = _module_distributions()
    missing = [m for m in modules if m not in mapping]
    assert not missing, f"modules without an installed distribution: {missing}"
    return {normalise(mapping[m][0]) for m in modules}


RULES = rule_envs_and_verbs()


def test_every_rule_names_an_env_file_that_exists():
    assert RULES, "no rules found"
    envs = {p.name for p in ENVS}
    assert {env for env, _ in RULES.values()} <= envs
    # one environment per rule family, not one for everything
    assert len({env for env, _ in RULES.values()}) >= 4


@pytest.mark.parametrize("rule", sorted(RULES))
def test_the_rules_env_holds_what_its_verb_imports(rule):
    env, verb = RULES[rule]
    needed = distributions(verb_imports(verb))
    have = env_packages(REPO / "envs" / env)
    assert needed <= set(have), f"rule {rule} (amdiff {verb}) imports {sorted(needed - set(have))}, not in envs/{env}"


def test_evaluation_and_plotting_env_is_torch_free():
    """The evaluation rules reach no torch, and their env does not install it."""
    evaluation = {rule: verb for rule, (env, verb) in RULES.items() if env == "evaluate.yaml"}
    assert {"evaluate_subject", "tables", "figure_slices"} <= set(evaluation)
    assert "torch" not in env_packages(REPO / "envs" / "evaluate.yaml")
    for rule, verb in evaluation.items():
        assert "torch" not in verb_imports(verb), rule


def test_the_analysis_sees_a_verbs_imports():
    """The import walk finds torch behind training and none behind the cohort summary."""
    assert "torch" in verb_imports("train")
    assert "monai" in verb_imports("train")
    assert "torch" not in verb_imports("summary")


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_pins_mirror_pyproject(env):
    pins = pyproject_pins()
    have = env_packages(env)
    assert have, f"{env.name} installs nothing with pip"
    wrong = {name: (version, pins.get(name)) for name, version in have.items() if pins.get(name) != version}
    assert not wrong, f"{env.name}: (env, pyproject) versions differ: {wrong}"


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_installs_this_checkout_after_deployment(env):
    """No `pip -e ..` (relative to .snakemake/conda/ once Snakemake copies the file): each env has
    a post-deploy script, and it installs the package from AMDIFF_SOURCE, which the Snakefile
    sets to this checkout."""
    assert not any("-e" in str(d) for d in yaml.safe_load(env.read_text())["dependencies"] if isinstance(d, dict))
    script = env.with_suffix(".post-deploy.sh")
    assert script.is_file(), f"{script.name} is missing"
    text = script.read_text()
    assert "AMDIFF_SOURCE" in text and "pip install" in text


SOURCE_SCRIPT = """
import os, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
os.environ.pop("AMDIFF_SOURCE", None)
with SnakemakeApi(OutputSettings()) as api:
    api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=Path(sys.argv[1]), workdir=Path(sys.argv[3]),
                 config_settings=ConfigSettings(configfiles=[Path(sys.argv[2])]))._workflow
print(os.environ.get("AMDIFF_SOURCE"))
"""


def test_reading_the_snakefile_tells_the_install_script_where_the_checkout_is(tmp_path):
    """What the post-deploy scripts run with: AMDIFF_SOURCE is this checkout once Snakemake has
    read the Snakefile (it runs the scripts from that process, after parsing)."""
    done = subprocess.run([sys.executable, "-c", SOURCE_SCRIPT, str(REPO / "Snakefile"),
                           str(REPO / ".test/config/config.yaml"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert Path(done.stdout.strip().splitlines()[-1]) == REPO
