"""Typed, validated parameters: one dataclass per `params.yaml` section (`sections`), the field framework
that validates them and derives their JSON Schema (`fields`), and probes of the sources they name
(`sources`). Imports nothing heavy: the Snakefile validates with it in well under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoqra.params.fields import ParamError, dataclass_schema, from_dict, spec, to_dict
from autoqra.params.sections import (
    ABLATIONS,
    GROUP_SIZES,
    BudgetParams,
    EvaluateParams,
    FinetuneParams,
    LoraParams,
    Params,
    ProfileParams,
    QuantParams,
    RefineParams,
    SearchParams,
    SweepParams,
    TaskParams,
    load_params,
)
from autoqra.params.sources import ModelParams, TinyParams, check_model_source, check_task_source

__all__ = ["ABLATIONS", "GROUP_SIZES", "BudgetParams", "EvaluateParams", "FinetuneParams", "LoraParams",
           "ModelParams", "ParamError", "Params", "ProfileParams", "QuantParams", "RefineParams", "SearchParams",
           "SweepParams", "TaskParams", "TinyParams", "check_model_source", "check_task_source", "dataclass_schema",
           "from_dict", "load_file", "load_params", "params_schema", "spec", "to_dict"]


def load_file(path: str | Path) -> Params:
    """A composed params file (`params.yaml` or a copy), validated."""
    import yaml

    with open(path) as fh:
        return load_params(yaml.safe_load(fh))


def params_schema() -> dict[str, Any]:
    """The schema in `workflow/schemas/params.schema.json`."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "AutoQRA params.yaml",
            **dataclass_schema(Params)}
