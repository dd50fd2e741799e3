"""config/README.md is generated from the schema, and the schema describes every key."""

from pathlib import Path

from amdiff.config_table import keys, load_schema, markdown

REPO = Path(__file__).resolve().parents[1]


def test_config_reference_is_the_schema_rendered():
    written = (REPO / "config" / "README.md").read_text()
    assert written == markdown(load_schema()), (
        "config/README.md is out of date: run `python -m amdiff.config_table config/README.md`")


def test_every_key_has_a_description():
    schema = load_schema()
    undescribed = [key for key, node in keys(schema) if not node.get("description", "").strip()]
    assert not undescribed, f"keys without a description in the schema: {undescribed}"


def test_the_table_lists_site_keys_and_defaults():
    table = markdown(load_schema())
    assert '| `sites.<site>.recon.engine` | `internal`, `listmode`, `external` | `"internal"` |' in table
    assert "| `training.val_sampler_steps` | integer >= 0 | `10` |" in table
    # a key the code reads from a site is listed once, not per configured site
    assert "sites.mct." not in table
