"""The layout keeps its promises: stages only wire, the library is pure, one home per concept."""

from __future__ import annotations

import ast
import re

from conftest import ROOT

from autoqra.store.process import OFFLINE
from stages.registry import STAGES

INFRASTRUCTURE = {"common", "params", "registry", "cli", "__init__"}  # what every stage entry point may use
STAGE_MODULES = {re.match(r"python -m stages\.(\w+)", s.cmd)[1] for s in STAGES.values()}


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_stages_wire_only_import_no_other_stage_and_stay_short():
    files = sorted((ROOT / "stages").glob("*.py"))
    assert {f.stem for f in files} == STAGE_MODULES | INFRASTRUCTURE  # every file is a stage or plumbing
    for f in files:
        imported = {m.split(".")[1] for m in _imports(f) if m.startswith("stages.")}
        assert imported <= INFRASTRUCTURE - {f.stem}, f"{f.name} imports stage module(s) {imported - INFRASTRUCTURE}"
        if f.stem in STAGE_MODULES:
            assert len(f.read_text().splitlines()) <= 100, f.name
            defs = [n.name for n in ast.parse(f.read_text()).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
            assert defs == ["main"], f"{f.name} defines {defs}: a stage is argv -> params -> one library call"


def test_the_library_is_pure_and_uses_public_optuna_only():
    for f in sorted((ROOT / "src/autoqra").rglob("*.py")):
        text, name = f.read_text(), f.relative_to(ROOT)
        banned = {m for m in _imports(f) if m.split(".")[0] in ("stages", "snakemake", "dvc", "hydra", "omegaconf",
                                                                "argparse")}
        assert not banned, f"{name} imports {banned}"
        assert not re.search(r"\._storage\b|\._trial_id\b", text), f"{name} uses Optuna's private API"
        assert "sys.argv" not in text, name


def test_the_offline_environment_has_one_list_that_the_makefile_and_the_cluster_script_export():
    make = (ROOT / "Makefile").read_text()
    cluster = (ROOT / "workflow/slurm/local-cluster.sh").read_text()
    for name, value in OFFLINE.items():
        assert re.search(rf"^export {name} := {value}$", make, re.M), name
        assert f"{name}={value}" in cluster, name
    for text in [p.read_text() for p in (ROOT / "src").rglob("*.py")] + [(ROOT / "tests/conftest.py").read_text()]:
        assert "HF_HUB_OFFLINE" not in text or "OFFLINE = {" in text  # defined once, in autoqra.store.process


def test_one_parser_of_uniform_arm_names_and_one_bit_ladder():
    files = [*(ROOT / "src").rglob("*.py"), *(ROOT / "stages").glob("*.py"), *(ROOT / "workflow").rglob("*.smk")]
    sources = {f.relative_to(ROOT): f.read_text() for f in files}
    grammar = r"uniform\(\\d\+\)_r|uniform\(\{\w+\}\)_r|\"_r\"\)|split\(\"_r\""  # a pattern or a split of the name
    parsers = [n for n, t in sources.items() if re.search(grammar, t)]
    assert [str(p) for p in parsers] == ["src/autoqra/arms.py"], parsers
    ladders = [n for n, t in sources.items() if re.search(r"\(2, 3, 4, 8, (16|UNQUANTIZED)\)|2\|3\|4\|8\|16", t)]
    assert [str(p) for p in ladders] == ["src/autoqra/space.py"], ladders
    tolerance = [n for n, t in sources.items() if re.search(r"limit \* \(1 \+", t)]
    assert [str(p) for p in tolerance] == ["src/autoqra/memory/budget.py"], tolerance


def test_the_public_api_resolves_every_name_it_lists():
    import autoqra

    assert len(autoqra.__all__) >= 20
    for name in autoqra.__all__:
        assert getattr(autoqra, name) is not None, name
