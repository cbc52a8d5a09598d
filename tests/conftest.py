"""Shared fixtures: the smoke task, the tiny model (built once per session), project copies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoqra.store.process import OFFLINE, environment

os.environ.update(OFFLINE)  # whatever the caller's environment says
environment()

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def smoke_params():
    from autoqra.params import load_params
    from stages.params import compose

    return load_params(compose(["experiment=smoke"]))


@pytest.fixture(scope="session")
def smoke():
    return smoke_params()


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory, smoke):
    from autoqra import data

    out = tmp_path_factory.mktemp("task")
    sizes = {s: getattr(smoke.task, s) for s in data.SPLITS}
    data.write_splits(data.generate(smoke.task.families, sizes, smoke.task.seed), out)
    return out


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, smoke, task_dir):
    """The prepared tiny model (char tokenizer, pre-trained on the smoke train split)."""
    from autoqra import data, models

    out = tmp_path_factory.mktemp("tiny") / "model"
    models.prepare_model("tiny", out, smoke.model.tiny, data.read_split(task_dir, "train"), smoke.model.tiny.seed)
    return out


def project_files() -> list[str]:
    """Tracked files plus untracked files git does not ignore: what a clean clone would hold."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    return sorted({f for f in out.split("\0") if f and (ROOT / f).is_file()})


def copy_project(dest: Path, git_commit: bool = False) -> Path:
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    if git_commit:
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
            subprocess.run(cmd, cwd=dest, check=True)
    return dest


def run_tool(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def calibration(model_dir, task_dir, n=32, max_length=256):
    from autoqra import data, models

    return data.calibration_ids(models.load_tokenizer(model_dir), task_dir, n, max_length)


def quantize_one(model_dir, task_dir, out, bits, group_size=64):
    from autoqra.quant import gptq

    gptq.gptq_quantize(model_dir, calibration(model_dir, task_dir), bits, group_size, True, False, 0.01, TARGETS, out)
    return out


def quantize_all(model_dir, task_dir, out_root, bits=(2, 3, 4, 8), group_size=64):
    from autoqra import quant

    return {b: quant.QuantCache(quantize_one(model_dir, task_dir, Path(out_root) / f"b{b}", b, group_size))
            for b in bits}


@pytest.fixture(scope="session")
def tiny_caches(tmp_path_factory, tiny_dir, task_dir):
    """GPTQ caches of the tiny model at 2, 3, 4 and 8 bits (group 64, as in the smoke experiment)."""
    return quantize_all(tiny_dir, task_dir, tmp_path_factory.mktemp("caches"))


@pytest.fixture(scope="session")
def smoke_project(tmp_path_factory):
    """A copy of the project with the smoke experiment run by Snakemake up to the profile stage and
    every GPTQ cache (what the search stages read)."""
    root = copy_project(tmp_path_factory.mktemp("smoke") / "project")
    caches = [f"data/quantize/b{b}" for b in smoke_params().quant.bits]
    res = run_tool(["snakemake", "--cores", "2", "data/profile", *caches, "--config", "experiment=smoke"], cwd=root)
    assert res.returncode == 0, res.stderr[-3000:]
    from stages.params import compose, to_yaml

    (root / "smoke.yaml").write_text(to_yaml(compose(["experiment=smoke"])))
    return root


@pytest.fixture(scope="session")
def searchable_project(smoke_project, tmp_path_factory):
    """The smoke project up to the priors (prepared data, GPTQ caches, priors, Snakemake's metadata),
    without any record, study or later output: copy it to search from scratch."""
    root = tmp_path_factory.mktemp("searchable") / "project"
    data = str(smoke_project / "data")  # the project's data folder, not src/autoqra/data
    shutil.copytree(smoke_project, root, symlinks=True,
                    ignore=lambda d, names: [n for n in names if d == data and n not in
                                             ("prepare", "quantize", "profile")])
    return root


def nested_config(overrides: list[str]) -> dict:
    """Snakemake's nested --config form of dotted Hydra overrides (it rejects dotted keys)."""
    config: dict = {}
    for o in overrides:
        key, value = o.split("=", 1)
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value.strip("[]").split(",") if value.startswith("[") else value
    return config


def snakemake_config(overrides: list[str]) -> list[str]:
    """`--config` and its items for dotted overrides (nested maps as YAML flow)."""
    return ["--config", *(f"{k}={v}" for k, v in nested_config(overrides).items())]


def training_records(root: Path) -> dict[str, dict]:
    """{record key: record} of every training record in a project's record stores (every stage's)."""
    out = {}
    for path in (root / "data/records").rglob("*.json"):
        r = json.loads(path.read_text())
        if "train_steps" in r:
            out[r["key"]] = r
    return out


def trained_records(root: Path) -> dict[str, int]:
    """{record key: steps trained} of every training record in a project's record stores."""
    return {k: r["train_steps"] for k, r in training_records(root).items()}


# a smaller search than the smoke experiment's, for the tests that run several searches
SMALL_SEARCH = ["experiment=smoke", "search.population=4", "search.generations=2", "search.offspring=2"]


@pytest.fixture(scope="session")
def one_worker_evolve(searchable_project, tmp_path_factory):
    """The small smoke search run by one worker (the evolve stage command, one thread): the reference of the
    tests that run the same search as several worker jobs."""
    from stages.params import compose, to_yaml

    root = tmp_path_factory.mktemp("one_worker") / "project"
    shutil.copytree(searchable_project, root, symlinks=True)
    (root / "one.yaml").write_text(to_yaml(compose(SMALL_SEARCH)))
    # one thread, as each of two workers on 2 cores has: a record's value depends on the threads it trained with
    res = run_tool(["python", "-m", "stages.evolve", "--params", "one.yaml", "--threads", "1"], cwd=root, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    return root


def budget_three_ways(p, prepare: Path, records: Path) -> list[tuple[float, float, int | None]]:
    """(limit, smallest configuration's cost, answer tokens priced) as `autoqra check` reports them before
    prepare (from the source and the task as they will be split) and after (from the prepared folder), and as
    the search stages bind on (`pipeline.setup`: the prepared model's shapes, the prepare stage's count)."""
    from autoqra import preflight
    from autoqra.memory import ModelSpec, from_params
    from autoqra.pipeline.setup import prepared_labelled

    before = preflight.check(p, None, records)
    after = preflight.check(p, prepare, records)
    labelled = prepared_labelled(prepare)
    space, _, budget = from_params(p, ModelSpec.from_pretrained(prepare / "model", p.quant.targets), labelled)
    return [(before["limit"], before["smallest"], before["labelled"]),
            (after["limit"], after["smallest"], after["labelled"]),
            (budget.limit, budget.cost(space.minimum()), labelled)]

