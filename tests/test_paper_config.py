"""config/paper.yaml says, for every key, whether its value is the paper's or our choice.

A leaf key line (a key with its value on the same line) must carry, trailing or in the comment
lines right above it, either ``# paper: Sec. X`` (or ``Table N``, ``Eq. N``, ``Fig. N``) or
``# our choice: <why>``. Parent keys (value on the following lines) need none: their leaves do.
"""

import re

import pytest

PAPER = re.compile(r"#\s*paper:\s*(?:Sec\.|Table|Eq\.|Fig\.)\s*\d")
OURS = re.compile(r"#\s*our choice:\s*\S.{9,}")  # a reason, not just the label
KEY = re.compile(r"^\s*(?:-\s+)?([A-Za-z_][\w-]*)\s*:(?=\s|$)")


def split_comment(line: str) -> tuple[str, str]:
    """(code, comment) of one YAML line; a '#' inside quotes or glued to text is not a comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i:]
    return line, ""


def is_marked(comment: str) -> bool:
    return bool(PAPER.search(comment) or OURS.search(comment))


def unmarked_keys(text: str) -> list[str]:
    """'line N: key' for every leaf key line without a marker on it or right above it."""
    problems, above = [], []
    for n, line in enumerate(text.splitlines(), 1):
        code, comment = split_comment(line)
        if not code.strip():
            # a comment line joins the block above the next key; a blank line ends it
            above = above + [comment] if comment else []
            continue
        key = KEY.match(code)
        if key and code[key.end():].strip() and not (is_marked(comment) or any(map(is_marked, above))):
            problems.append(f"line {n}: {key.group(1)}")
        above = []
    return problems


def test_every_paper_yaml_key_says_paper_or_our_choice(repo):
    problems = unmarked_keys((repo / "config" / "paper.yaml").read_text())
    assert not problems, "keys without '# paper: Sec./Table ...' or '# our choice: why': " + ", ".join(problems)


@pytest.mark.parametrize("text, expected", [
    ("a: 1  # paper: Table 1\n", []),
    ("a: 1  # paper: Sec. 3.2 (stride 32)\n", []),
    ("a: 1  # our choice: the paper gives no value\n", []),
    ("# our choice: the paper gives no value\na: 1\n", []),
    ("# our choice: the paper gives no value\n\na: 1\n", ["line 3: a"]),         # blank line ends it
    ("a: 1\n", ["line 1: a"]),
    ("a: 1  # paper\n", ["line 1: a"]),                                          # no reference
    ("a: 1  # our choice:\n", ["line 1: a"]),                                    # no reason
    ("a: 1  # see Table 1\n", ["line 1: a"]),
    ("parent:\n  b: 1  # paper: Eq. 4\n  c: 2\n", ["line 3: c"]),                  # parents need none
    ("a: {x: 1, y: 2}  # paper: Table 1\nb: \"x # paper: Table 1\"\n", ["line 2: b"]),  # '#' in quotes
    ("a: 1  # our choice: one\nb: 2\n", ["line 1: a", "line 2: b"]),               # reason too short; no carry-over
])
def test_marker_rules(text, expected):
    assert unmarked_keys(text) == expected
