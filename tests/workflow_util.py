"""Read both orchestrators' concrete jobs, so tests can compare them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def snakemake_jobs(root: Path, config: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Every job of the full Snakemake DAG: inputs, outputs, declared params keys, shell command, priority."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, Quietness, ResourceSettings

    jobs = {}
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        wf = api.workflow(resource_settings=ResourceSettings(cores=2), snakefile=root / "Snakefile", workdir=root,
                          config_settings=ConfigSettings(config=config or {}))
        dag_api = wf.dag(dag_settings=DAGSettings(forceall=True))
        w = wf._workflow
        w.dag_settings = dag_api.dag_settings
        w._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True)
        w._build_dag()
        for job in w.dag.jobs:
            if job.rule.name == "all":
                continue
            values = list(job.wildcards_dict.values())  # DVC names a matrix item by its values joined with "-"
            name = job.rule.name + (f"@{'-'.join(values)}" if values else "")
            priority = job.rule.expand_priority(job.wildcards_dict, job.input, 1)
            jobs[name] = {"cmd": normalise_cmd(job.shellcmd), "deps": sorted(job.input), "outs": sorted(job.output),
                          "params": sorted(job.params["values"]), "priority": priority}
    return jobs


def dvc_stages(root: Path) -> dict[str, dict[str, Any]]:
    """Every stage of dvc.yaml (foreach expanded): the same fields as `snakemake_jobs`."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    out = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            deps = [d for d in stage.deps if not isinstance(d, ParamsDependency)]
            params = [k for d in stage.deps if isinstance(d, ParamsDependency) for k in d.params]
            out[stage.name] = {"cmd": normalise_cmd(stage.cmd), "deps": sorted(d.def_path for d in deps),
                               # persist outs (record stores) are DVC's alone: Snakemake must not delete them
                               "outs": sorted(o.def_path for o in stage.outs if not o.persist),
                               "params": sorted(params)}
    return out


def normalise_cmd(cmd: str) -> str:
    """Drop what legitimately differs: the params file path, Snakemake's thread count and the files of the
    search's worker jobs a gather job reads (DVC runs the workers inside the stage's one command)."""
    cmd = re.sub(r"--params \S+", "--params PARAMS", cmd)
    cmd = re.sub(r" --gathered( data/search/workers/\S+)*", "", cmd)
    return re.sub(r" --threads \d+", "", cmd).strip()
