"""The configuration reference (config/README.md), generated from the schema.

Every key's meaning and default live in one place, amdiff/schemas/config.schema.yaml; this module
turns them into a Markdown table, one row per key in schema order (a site's keys as
``sites.<site>.…``). tests/test_config_table.py checks that config/README.md is what it writes
and that every key has a description. Regenerate after editing the schema:

    python -m amdiff.config_table config/README.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from amdiff.config import SCHEMA_PATH

HEADER = """# Configuration reference

Generated from `amdiff/schemas/config.schema.yaml` by `python -m amdiff.config_table
config/README.md`; edit the schema, not this file. `config/config.yaml` is the demo,
`config/study.yaml` the trained study, `config/paper.yaml` the paper's settings (each key marked
`# paper` or `# our choice`). A default applies where a key is left out.

| key | values | default | meaning |
|---|---|---|---|
"""


def _resolve(node: dict, schema: dict) -> dict:
    """A property's schema with its $ref (into $defs) merged in, the property's own keys winning."""
    while "$ref" in node:
        target = schema["$defs"][node["$ref"].split("/")[-1]]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def keys(schema: dict) -> list[tuple[str, dict]]:
    """(dotted key, resolved property schema) for every key, depth first in schema order."""
    out = []

    def walk(node: dict, path: str) -> None:
        node = _resolve(node, schema)
        if path:
            out.append((path, node))
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{path}.{name}" if path else name)
        if path == "sites":   # any site name: its settings once, as sites.<site>
            walk(node["additionalProperties"], "sites.<site>")

    walk(schema, "")
    return out


def _values(node: dict) -> str:
    if "enum" in node:
        return ", ".join(f"`{v}`" if v is not None else "`null`" for v in node["enum"])
    kind = node.get("type", "object" if "properties" in node else "")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    bounds = [f"{op} {node[key]:g}" for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                    ("maximum", "<="), ("exclusiveMaximum", "<"))
              if key in node]
    if kind == "array" and isinstance(node.get("items"), dict):
        item = _values(node["items"])
        sizes = (node.get("minItems"), node.get("maxItems"))
        count = f"{sizes[0]} " if sizes[0] is not None and sizes[0] == sizes[1] else ""
        return f"list of {count}{item or 'items'}"
    return " ".join([kind, ", ".join(bounds)]).strip()


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown(schema: dict) -> str:
    rows = []
    for key, node in keys(schema):
        default = f"`{json.dumps(node['default'])}`" if "default" in node else ""
        rows.append(f"| `{key}` | {_cell(_values(node))} | {_cell(default)} | {_cell(node.get('description', ''))} |")
    return HEADER + "\n".join(rows) + "\n"


def load_schema() -> dict:
    return yaml.safe_load(Path(SCHEMA_PATH).read_text())


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m amdiff.config_table OUT.md", file=sys.stderr)
        return 2
    Path(args[0]).write_text(markdown(load_schema()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
