"""The README is a user's guide whose library example runs as written; every table of docs/ says where it
was measured (a commit and a machine kind), so a number never floats free of its provenance."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

MAKE_BLOCK = """\
make run    # creates .venv, installs the pinned dependencies, runs the pipeline on the embedded SmolLM2-135M
make test   # creates .venv, installs the pinned dependencies, runs the test suite"""

# a short commit hash: 7 to 40 hex digits, at least one a digit (no English word), not part of a longer word
COMMIT = re.compile(r"(?<![0-9A-Za-z])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}(?![0-9A-Za-z])")
MACHINE = re.compile(r"AMD EPYC|Intel|AVX2|H200|H100")
TABLE_RULE = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+\s*$")
WINDOW = 12


def code_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, body, line index of the opening fence) of every fenced block, in order."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("```"):
            lang, start = lines[i][3:].strip(), i
            i += 1
            body = []
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append((lang, "\n".join(body), start))
        i += 1
    return blocks


def example(text: str, heading: str = "## Use it as a library") -> str:
    """The first ```python block after `heading`."""
    line = text.splitlines().index(heading)
    return next(body for lang, body, start in code_blocks(text) if lang == "python" and start > line)


def library_example(text: str) -> str:
    return example(text)


def tables_without_provenance(text: str) -> list[int]:
    """1-based line numbers of the tables (header row + rule row) that no line names a commit and a machine
    kind in the 12 lines above, counting only lines after the previous table (one line, one table) and
    after the last heading (a section's provenance does not cover the next section's table)."""
    lines, missing, fenced, floor = text.splitlines(), [], False, 0
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced and line.startswith("#"):
            floor = i + 1
        if fenced or i == 0 or not TABLE_RULE.match(line) or not lines[i - 1].startswith("|"):
            continue
        header = i - 1
        window = lines[max(floor, header - WINDOW):header]
        if not any(COMMIT.search(w) and MACHINE.search(w) for w in window):
            missing.append(header + 1)
        end = i
        while end + 1 < len(lines) and lines[end + 1].startswith("|"):
            end += 1
        floor = end + 1
    return missing


def test_the_library_example_runs_as_written_and_its_pick_fits_the_budget(tmp_path, monkeypatch):
    example = library_example(README.read_text())
    assert len(example.splitlines()) <= 30
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(example, "README.md (Use it as a library)", "exec"), namespace)
    space, budget, best, mean, scores = (namespace[k] for k in ("space", "budget", "best", "mean", "scores"))
    assert space.contains(best) and budget.feasible(best)
    assert budget.cost(best) <= budget.limit * (1 + 1e-9)
    assert len(scores) == 2 and abs(mean - sum(scores) / 2) < 1e-12  # the top rung's two seeds
    assert list(tmp_path.iterdir()) == []  # in-memory studies: nothing written


def test_the_readme_is_short_and_opens_with_the_make_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    lang, body, start = code_blocks(text)[0]
    assert (start, lang, body) == (0, "bash", MAKE_BLOCK)


def test_the_provenance_check_catches_a_table_without_one():
    rows = "| a | b |\n|---|---|\n| 1 | 2 |\n"
    named = "Measured at 5700bbb on the AMD EPYC kind (AVX-512 BF16): `make run`.\n\n"
    assert tables_without_provenance(named + rows) == []
    assert tables_without_provenance("Measured on the AMD EPYC kind.\n\n" + rows) == [3]  # no commit
    assert tables_without_provenance("Measured at 5700bbb.\n\n" + rows) == [3]  # no machine
    assert tables_without_provenance("\n" * 13 + rows) == [14]
    assert tables_without_provenance(named + rows + "\n" + rows) == [7]  # one line serves one table
    assert tables_without_provenance(named + "\n" * 11 + rows) == [14]  # 13 lines above: too far
    assert tables_without_provenance(named + "## Next section\n\n" + rows) == [5]  # another section's


def test_every_docs_table_names_its_commit_and_machine_kind():
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages
    missing = {p.name: lines for p in pages if (lines := tables_without_provenance(p.read_text()))}
    assert missing == {}, f"tables without a commit and machine kind above them (file: lines): {missing}"


def test_the_commits_named_above_docs_tables_exist():
    git = ["git", "-C", str(ROOT)]
    shallow = subprocess.run([*git, "rev-parse", "--is-shallow-repository"], capture_output=True, text=True)
    if shallow.returncode != 0 or shallow.stdout.strip() != "false":
        return  # no history to check against (an exported tree or a shallow clone)
    named = set()
    for page in (ROOT / "docs").glob("*.md"):
        named |= {m.group(0) for line in page.read_text().splitlines() if MACHINE.search(line)
                  for m in COMMIT.finditer(line)}
    unknown = [h for h in sorted(named)
               if subprocess.run([*git, "cat-file", "-e", f"{h}^{{commit}}"], capture_output=True).returncode != 0]
    assert named and unknown == []
