"""reports/models.md lists every AMDiff variant with the Eq. 10 terms the code trains it with."""

from __future__ import annotations

import re

import pytest

from amdiff.contracts import VARIANTS

from .conftest import REPO

MODELS_DOC = REPO / "reports" / "models.md"
TERMS_HEADER = "| variant | Eq. 10 terms |"
# "L_diff" alone, or "L_diff + λ_warm (...)": every term but L_diff is under the warm-up weight.
TERMS_CELL = re.compile(r"L_diff(?: \+ λ_warm \((?P<warm>.+)\))?")
TERM = re.compile(r"L_(diff|lor|rev|seg)\b")
LOR_CLASSES = re.compile(r"L_lor\[([^\]]*)\]")


def markdown_table(text: str, header: str) -> dict[str, list[str]]:
    """Rows of the markdown table under ``header``: first cell (backticks stripped) -> cells."""
    lines = text.splitlines()
    start = lines.index(header) + 2          # skip the header and the |---| line
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def expected_lor_classes(name: str) -> set[str]:
    """The classes L_lor keeps in a variant: lesion and/or organs."""
    variant = VARIANTS[name]
    classes = set()
    if not variant.drop_lesion_reg:
        classes.add("lesion")
    if not variant.drop_organ_reg:
        classes.add("organs")
    return classes


@pytest.fixture(scope="module")
def terms_table() -> dict[str, list[str]]:
    return markdown_table(MODELS_DOC.read_text(), TERMS_HEADER)


def test_every_variant_has_a_terms_row(terms_table):
    assert set(terms_table) == set(VARIANTS)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_documented_terms_are_the_trained_terms(terms_table, name):
    cell = terms_table[name][0]
    match = TERMS_CELL.fullmatch(cell)
    assert match, f"{name}: {cell!r} is not 'L_diff' or 'L_diff + λ_warm (...)'"
    assert tuple(TERM.findall(cell)) == VARIANTS[name].loss_terms(), name
    assert (match["warm"] is None) == (VARIANTS[name].loss_terms() == ("diff",)), name
    if "lor" in VARIANTS[name].loss_terms():
        classes = LOR_CLASSES.findall(cell)
        assert len(classes) == 1, f"{name}: L_lor must name its classes, e.g. L_lor[lesion]"
        assert set(classes[0].split(", ")) == expected_lor_classes(name), name


def test_clean_ablations_are_documented(terms_table):
    """The two fixes of issue 11: no L_rev without f_rev, and the whole-L_lor ablation."""
    assert "L_rev" not in terms_table["amdiff_no_revision"][0]
    assert "L_lor" not in terms_table["amdiff_no_lor"][0]
    assert "L_lor[lesion, organs]" in terms_table["amdiff"][0]


def test_every_variant_is_in_the_models_table():
    models = markdown_table(MODELS_DOC.read_text(), "| model | parameters | input | output | losses | source |")
    assert set(VARIANTS) <= set(models)
    # Same network as AMDiff (only the loss changes): the same parameter count.
    assert models["amdiff_no_lor"][0] == models["amdiff_no_lesion_reg"][0] == "42.38 M"
