"""The results prose must not drift from the data: every number quoted in README's and docs/ablations.md's
results sections is a value of the committed CSVs of the study it is about (at the precision quoted), and
prose that calls two arms equal points to an equivalence (TOST) verdict."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
# (file, headings whose sections hold results; a section ends at the next heading of its level or above)
SECTIONS = (("README.md", ("Ablations you can trust", "The theory's optimizers")),
            ("docs/ablations.md",
             ("Measured: theory_lm_v2", "Measured: study_wide_v2", "Measured: study_bios_v2",
              "Measured: study_tiny_v2", "Measured: the v2 pilot", "Measured (v1 design)")))
STUDIES = ("study_tiny_v2_pilot", "study_tiny_v2", "study_bios_v2", "study_wide_v2",
           "compare_tiny_vs_wide_v2", "theory_lm_v2", "theory_lm_v2_polar", "v1_study_tiny", "v1_study_bios",
           "v1_theory_lm")
# A decimal number, with an optional sign (ASCII or Unicode minus) and percent sign.
NUMBER = re.compile(r"(?<![\w.])[−-]?\d+\.\d+%?")
# Not a quantity: an arXiv identifier (a paper cited next to the results).
ARXIV = re.compile(r"arXiv[ :]$")
# Quantities no study CSV holds: durations and sizes (what a closing note reports from the clock).
UNIT = re.compile(r"\s*(min\b|s\b|h\b|ms\b|M\b|k\b|GB\b|GiB\b)")
# Words that call two arms equal ("at equal overall loss" names the matched-loss read instead).
EQUAL = re.compile(r"\b(equals?(?! (overall )?loss)|the same as|as good as|behaves like|no difference|"
                   r"changes nothing)\b", re.I)
VERDICT = re.compile(r"TOST|equivalen|inconclusive", re.I)


def sections(path: str, starts: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """The (title, lines) of each section whose heading starts with one of `starts`."""
    found: list[tuple[str, list[str]]] = []
    level = None
    for line in (ROOT / path).read_text().splitlines():
        if line.startswith("#"):
            depth, title = len(line) - len(line.lstrip("#")), line.lstrip("#").strip()
            if level is not None and depth <= level:
                level = None
            if level is None and title.startswith(starts):
                level = depth
                found.append((title, []))
                continue
        if level is not None:
            found[-1][1].append(line)
    return found


def study_values(names: set[str]) -> list[float]:
    """Every number in the committed CSVs of these studies (their directories and variants)."""
    values = []
    for path in sorted(RESULTS.glob("*/*.csv")):
        if names and not path.parent.name.startswith(tuple(names)):
            continue
        with path.open() as f:
            for row in csv.reader(f):
                for cell in row:
                    try:
                        values.append(float(cell))
                    except ValueError:
                        continue
    return values


def quoted(token: str, values: list[float]) -> bool:
    """Whether a quoted number is some value (or its negation; x100 for a percentage) at its precision."""
    percent = token.endswith("%")
    text = token.rstrip("%").replace("−", "-")
    digits = len(text.split(".")[1])
    for v in values:
        for candidate in (v, -v, 100 * v, -100 * v) if percent else (v, -v):
            if f"{candidate:.{digits}f}" == text:
                return True
    return False


def claims() -> list[tuple[str, str, list[str]]]:
    out = []
    for path, starts in SECTIONS:
        for title, lines in sections(path, starts):
            out.append((path, title, lines))
    return out


def test_the_results_sections_are_found():
    titles = [title for _, title, _ in claims()]
    assert len(titles) >= 4 and all(lines for _, _, lines in claims()), titles


@pytest.mark.parametrize("path, title, lines", claims(), ids=[f"{p}:{t[:30]}" for p, t, _ in claims()])
def test_every_quoted_number_is_in_the_studys_csvs(path, title, lines):
    text = "\n".join(lines)
    named = {s for s in STUDIES if s in title or s in text}
    scope = {s for s in STUDIES if s in title} or named
    values = study_values(scope)
    drift = []
    for line in lines:
        if "figures/" in line:
            continue
        for match in NUMBER.finditer(line):
            if UNIT.match(line, match.end()) or ARXIV.search(line[:match.start()]):
                continue
            if not quoted(match.group(), values):
                drift.append(f"{match.group()} in: {line.strip()[:120]}")
    assert not drift, (f"{path} § {title}: numbers not in the committed CSVs of {sorted(scope)}:\n"
                       + "\n".join(drift))


@pytest.mark.parametrize("path, title, lines", claims(), ids=[f"{p}:{t[:30]}" for p, t, _ in claims()])
def test_prose_that_calls_arms_equal_points_to_an_equivalence_verdict(path, title, lines):
    text = re.sub(r'"[^"]*"', '""', " ".join(line.strip() for line in lines))  # quoted words are not claims
    sentences = re.split(r"(?<=[.;])\s", text)
    unbacked = [s[:200] for s in sentences if EQUAL.search(s) and not VERDICT.search(s)]
    assert not unbacked, f"{path} § {title}: 'equal' without a TOST verdict:\n" + "\n".join(unbacked)
