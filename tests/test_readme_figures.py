"""Every figure in the README comes from a results file that a benchmark script writes.

The README is read block by block (paragraphs and tables separated by blank lines; a table also takes the
citations of the blocks right above and below it, its caption). A block that cites one or more
`benchmarks/results/*.md` files (or `results/*.md`) may only state decimal figures that appear verbatim in one
of those files; a block with a measured-looking figure (a decimal number) and no citation fails too. Version
numbers (x.y.z), licence names and figures in code are not measurements.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CITATION = re.compile(r"(?:benchmarks/)?results/([\w.-]+\.md)")
# a decimal or scientific figure that is not part of a version (1.1.5) or a longer dotted token
FIGURE = re.compile(r"(?<![\w.-])(\d+\.\d+(?:e-?\d+)?|\d+e-?\d+)(?!(?!x\b)\w|\.\d)")  # "1.32x" counts


def readme_blocks() -> list[tuple[int, str]]:
    """(first line number, text) of each block outside fenced code."""
    blocks, current, start, fenced = [], [], 0, False
    for number, line in enumerate((ROOT / "README.md").read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        if line.strip():
            start = start or number
            current.append(line)
        elif current:
            blocks.append((start, "\n".join(current)))
            current, start = [], 0
    if current:
        blocks.append((start, "\n".join(current)))
    return blocks


def figures(text: str) -> list[str]:
    text = re.sub(r"`[^`]*`", "", text)  # inline code: flags, versions, file names
    text = re.sub(r"\[[^\]]*\]\([^)]*\)", "", text)  # links
    text = re.sub(r"(Apache|CC BY(?:-NC)?)[- ]\d+\.\d+", "", text)  # licence names
    return FIGURE.findall(text)


def test_every_readme_figure_is_in_its_cited_results_file():
    problems = []
    blocks = readme_blocks()
    for k, (line, block) in enumerate(blocks):
        cited = CITATION.findall(block)
        if block.lstrip().startswith("|"):  # a table's caption sits right above or below it
            cited += [c for _, near in blocks[max(k - 1, 0) : k + 2] for c in CITATION.findall(near)]
        found = figures(block)
        if not found:
            continue
        if not cited:
            problems.append(f"README line {line}: figures {found} cite no benchmarks/results file")
            continue
        missing_files = [name for name in cited if not (RESULTS / name).is_file()]
        if missing_files:
            problems.append(f"README line {line}: cites missing results files {missing_files}")
            continue
        sources = "\n".join((RESULTS / name).read_text() for name in set(cited))
        for value in found:
            if not re.search(rf"(?<![\d.]){re.escape(value)}(?!\d)", sources):
                problems.append(f"README line {line}: {value} is not in {sorted(set(cited))}")
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_wrong_figure(tmp_path):
    assert figures("took 2.31 min (`results/demo.md`), nerfstudio 1.1.5, `--lr 5e-4`, 3e-7, 1.32x") == [
        "2.31",
        "3e-7",
        "1.32",
    ]
    assert CITATION.findall("see benchmarks/results/demo.md and results/render.md") == ["demo.md", "render.md"]
