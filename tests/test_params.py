"""Parameters: composition, overrides on both orchestrators, and one-line errors naming the key."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import ROOT, run_tool

from autoqra.params import ParamError, load_params, params_schema
from stages import params as P


def test_params_yaml_is_the_default_composition():
    assert (ROOT / "params.yaml").read_text() == P.to_yaml(P.compose([]))


def test_a_key_a_params_dict_leaves_out_takes_the_default_compositions_value():
    """The dataclasses' defaults are what a library caller's params dict gets for every key it leaves out:
    they must be `make run`'s values, or that caller silently runs another search than the docs describe."""
    import dataclasses

    from autoqra.params import Params, to_dict

    tree = P.compose([])
    differ = []
    for f in dataclasses.fields(Params):
        if dataclasses.is_dataclass(default := f.default_factory() if callable(f.default_factory) else f.default):
            differ += [f"{f.name}.{k}: {v!r} != {tree[f.name][k]!r}" for k, v in to_dict(default).items()
                       if v != tree[f.name][k] and f"{f.name}.{k}" != "task.system_prompt"]  # user tasks: null
        else:
            assert default == tree[f.name], f.name
    assert not differ, differ


def test_schema_file_is_generated_from_the_dataclasses():
    assert json.loads((ROOT / "workflow/schemas/params.schema.json").read_text()) == params_schema()


def test_dvc_yaml_is_generated_from_the_registry():
    from stages.registry import dvc_text

    assert (ROOT / "dvc.yaml").read_text() == dvc_text()


def test_stage_one_declares_every_search_key_but_stage_twos():
    import dataclasses

    from autoqra.params import SearchParams
    from stages.registry import LOCATIONS, SEARCH

    assert set(SEARCH) | {"search.refine", *LOCATIONS} == {f"search.{f.name}" for f in dataclasses.fields(SearchParams)}


def test_default_composition_validates_and_round_trips():
    tree = P.compose([])
    from autoqra.params import to_dict

    assert to_dict(load_params(tree)) == tree


def test_stage_two_runs_no_more_workers_than_its_proposals_seeds():
    from autoqra.params.rules import stage_workers

    default = P.validated(P.compose([]))
    assert (stage_workers(default, "evolve"), stage_workers(default, "refine")) == (2, 1)  # one seed at the top
    gpu = P.validated(P.compose(["experiment=gpu", "search.workers=4"]))  # seeds per rung 1, 2, 3
    assert (stage_workers(gpu, "evolve"), stage_workers(gpu, "refine")) == (4, 3)
    assert stage_workers(P.validated(P.compose(["experiment=smoke"])), "refine") == 1  # pinned to one worker
    with pytest.raises(ValueError, match="'refine_worker'"):  # a rule's name is no stage's
        stage_workers(default, "refine_worker")


def test_smoke_experiment_overrides_groups_and_values():
    tree = P.compose(["experiment=smoke", "search.population=16"])
    assert tree["model"]["source"] == "tiny"
    assert tree["quant"]["bits"] == [2, 4, 8] and tree["budget"]["reference"] == "uniform4_r8"
    assert tree["search"]["population"] == 16


@pytest.mark.parametrize("config, expected", [
    ({"search": {"population": 16}}, ["search.population=16"]),
    ({"experiment": "smoke", "quant": {"bits": ["2", "4"]}}, ["experiment=smoke", "quant.bits=[2,4]"]),
    ({"finetune": {"lr": "1e-3"}, "search": {"storage": "null"}}, ["finetune.lr=0.001", "search.storage=null"]),
    ({"model": {"source": "/a b/c"}}, ["model.source='/a b/c'"]),
])
def test_snakemake_config_is_flattened_to_hydra_overrides(config, expected):
    assert P.flatten_overrides(config) == expected


@pytest.mark.parametrize("overrides, key", [
    (["search.population=-3"], "search.population"),
    (["quant.bits=[5]"], "quant.bits"),
    (["search.populaton=8"], "search.populaton"),
    (["model.source=/nonexistent/model"], "model.source"),
    (["experiment=smok"], "experiment"),
    (["finetune.schedule=step"], "finetune.schedule"),
    (["quant.calib_samples=500"], "quant.calib_samples"),
    (["search.fidelities=[32,8]"], "search.fidelities"),
    (["search.pick_confidence=0.3"], "search.pick_confidence"),  # below 0.5 the guard would prefer a worse one
    (["lora.ranks=true"], "lora.ranks"),
    (["task.source=/no/such/file.jsonl"], "task.source"),
    (["sweep.seeds=[1]"], "sweep.name"),
    (["sweep=pair", "sweep.ablations=[none,fancy]"], "sweep.ablations[1]"),
    (["sweep=pair", "sweep.budgets=[]"], "sweep.budgets"),
    (["sweep=pair", "sweep.arms=[uniform5_r8]"], "sweep.arms"),
    (["sweep=cells"], "sweep"),
    (["finetune.seeds=[1,2,3]"], "finetune.seeds"),  # seed 1 is the top rung's second seed
    (["sweep=pair", "sweep.seeds=[100]"], "finetune.seeds"),  # a sweep cell's search would train under 100
])
def test_bad_values_fail_in_one_line_naming_the_key(overrides, key):
    with pytest.raises(ParamError) as err:
        load_params(P.compose(overrides))
    message = str(err.value)
    assert "\n" not in message and message.startswith(key)


def test_type_errors_name_the_type():
    with pytest.raises(ParamError, match=r"search.population='many': must be of type int"):
        load_params(P.compose(["search.population=many"]))


@pytest.mark.parametrize("config, key", [
    ("search={population: -3}", "search.population"),
    ("quant={bits: [5]}", "quant.bits"),
    ("search={populaton: 8}", "search.populaton"),
    ("model={source: /nonexistent/model}", "model.source"),
])
def test_snakemake_rejects_bad_config_naming_the_key(config, key):
    res = run_tool(["snakemake", "-n", "--config", config], cwd=ROOT, timeout=60)
    assert res.returncode != 0
    assert f"invalid parameter: {key}" in res.stdout + res.stderr


def test_snakemake_passes_a_composed_file_only_when_overridden(tmp_path):
    tree = P.compose([])
    assert P.params_file(tree) == "params.yaml"
    smoke = P.compose(["experiment=smoke"])
    path = P.params_file(smoke, root=tmp_path)
    assert yaml.safe_load((tmp_path / path).read_text()) == smoke


def test_final_seeds_that_overlap_the_search_seeds_are_rejected_in_one_line_before_any_work(tmp_path):
    """The final arms must be trained afresh: a configuration that shares a seed with a search stage is an
    error that names both keys, from the stage's first check (before any GPTQ pass or training)."""
    with pytest.raises(ParamError) as err:
        load_params(P.compose(["finetune.seeds=[0,1,2]"]))
    assert "finetune.seeds=[0, 1, 2]" in str(err.value) and "search.seeds_per_rung=[1, 1, 1]" in str(err.value)
    assert "search.frontier_seeds=2" in str(err.value)
    assert "seed=0" in str(err.value)
    (tmp_path / "p.yaml").write_text(P.to_yaml(P.compose(["experiment=smoke"])).replace("- 100\n", "- 1\n", 1))
    res = run_tool(["python", "-m", "stages.prepare", "--params", str(tmp_path / "p.yaml"), "--out",
                    str(tmp_path / "prepare")], cwd=ROOT, timeout=120)
    assert res.returncode != 0 and not (tmp_path / "prepare").exists()
    assert res.stderr.strip().splitlines()[-1].startswith("error: finetune.seeds=[1, 101, 102]: overlaps")
