"""A worker on another host that stops beating is dead; record keys follow the code that computes them."""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState

from autoqra.search.optuna import JOB, fail_dead_trials, liveness
from autoqra.store import fingerprint
from autoqra.store.fingerprint import VALUE_CODE

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _running_trial(study: optuna.Study, storage: optuna.storages.BaseStorage, beat: float | None) -> int:
    trial = study.ask()
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("s"), trial.number)
    storage.set_trial_system_attr(trial_id, JOB, {"config": "x", "fidelity": 1})
    trial.set_user_attr("worker", "node-elsewhere-17:4242:123")  # another host: pid liveness says nothing
    if beat is not None:
        trial.set_user_attr("heartbeat", beat)
    return trial.number


def test_a_silent_worker_on_another_host_is_failed_and_a_beating_one_is_not(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    silent = _running_trial(study, storage, time.time() - liveness.STALE_S - 5)
    beating = _running_trial(study, storage, time.time())
    assert fail_dead_trials(study, JOB) == 1
    states = {t.number: t.state for t in study.get_trials()}
    assert states[silent] == TrialState.FAIL and states[beating] == TrialState.RUNNING


def test_code_fingerprint_follows_the_source(tmp_path, monkeypatch):
    pkg = tmp_path / "fpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "scorer.py").write_text("def score(x):\n    return x\n")
    (pkg / "plotter.py").write_text("def plot():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    of_code = fingerprint.of_code.__wrapped__  # cached per process (the code of a running process is fixed)
    before = of_code("fpkg.scorer")
    (pkg / "plotter.py").write_text("def plot():\n    return 1\n")  # other code: same fingerprint
    assert of_code("fpkg.scorer") == before
    (pkg / "scorer.py").write_text("def score(x):\n    return 2 * x\n")
    assert of_code("fpkg.scorer") != before


ORIGINAL = {"value.py": '''"""Scores."""
import math

from other import helper

SCALE = 2.0


def score(x):
    """Twice the log."""
    from other import offset  # a local import
    return SCALE * math.log(x) + helper(x) + offset


class Scorer:
    def __call__(self, x):
        return score(x)
''', "train.py": '''import torch


def step(model):
    return model.loss()
'''}
# the same definitions moved into other files under other names, with other imports, comments and
# docstrings: a layout change (issue 21)
MOVED = {"train/scoring.py": '''"""The scores, now in a package of their own."""
import math

from elsewhere.helpers import helper

# the factor
SCALE = 2.0


class Scorer:
    """Calls score."""

    def __call__(self, x):
        return score(x)  # same body
''', "train/loop.py": '''import torch

from elsewhere.helpers import offset
from train.scoring import SCALE


def step(model):
    return model.loss()


def score(x):
    from elsewhere import offset
    return SCALE * math.log(x) + helper(x) + offset
'''}


def _write(root, files):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return [root / name for name in files]


def test_moving_code_between_files_keeps_the_code_fingerprint_and_changing_a_definition_does_not(tmp_path):
    before = fingerprint.of_sources(*_write(tmp_path / "a", ORIGINAL))
    assert fingerprint.of_sources(*_write(tmp_path / "b", MOVED)) == before
    changed = {**MOVED, "train/loop.py": MOVED["train/loop.py"].replace("SCALE * math", "SCALE / math")}
    assert fingerprint.of_sources(*_write(tmp_path / "c", changed)) != before
    renamed = {**MOVED, "train/scoring.py": MOVED["train/scoring.py"].replace("SCALE = 2.0", "SCALE = 3.0")}
    assert fingerprint.of_sources(*_write(tmp_path / "d", renamed)) != before
    dropped = {"value.py": ORIGINAL["value.py"]}  # a definition leaves the value code
    assert fingerprint.of_sources(*_write(tmp_path / "e", dropped)) != before


def test_the_record_key_covers_the_code_that_determines_a_value_and_not_the_report():
    assert {"autoqra.train.scoring", "autoqra.data.encoding", "autoqra.train.loop", "autoqra.train.lora",
            "autoqra.pipeline.fidelity", "autoqra.quant.cache", "autoqra.quant.backends",
            "autoqra.models", "autoqra.devices"} <= set(VALUE_CODE)
    assert not {"autoqra.report.search", "autoqra.report.arms", "autoqra.train.evaluation"} & set(VALUE_CODE)
    for module in VALUE_CODE:  # every name resolves: a module moved without updating the list fails here
        assert fingerprint.of_code(module)
