# AutoQRA workflow. Parameters: `params/` composed by Hydra with `--config` overrides, e.g.
#   snakemake --cores all --config experiment=smoke 'search={population: 16}'
# Each rule is a thin shell call of `python -m stages.<name>`; dvc.yaml runs the same commands.
import sys

sys.path.insert(0, workflow.basedir)

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from autoqra.config import ParamError
from stages import params as P
from stages.registry import STAGES

min_version("9.0")

try:
    PARAMS = P.compose(P.flatten_overrides(config))
    P.validated(PARAMS)
except ParamError as exc:
    raise WorkflowError(f"invalid parameter: {exc}") from None
validate(PARAMS, "workflow/schemas/params.schema.json")
PARAMS_FILE = P.params_file(PARAMS)


def stage_params(name):
    """The values of the params a stage reads: a change re-runs the rule (rerun trigger `params`)."""
    return P.section(PARAMS, STAGES[name].params)


def stage_code(name):
    return list(STAGES[name].code)


include: "workflow/rules/prepare.smk"
include: "workflow/rules/quantize.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/final.smk"
include: "workflow/rules/sweep.smk"


rule all:
    default_target: True
    input:
        "data/prepare",
        expand("data/quantize/b{bits}", bits=BITS),
        "data/profile",
        "data/search/evolve",
        "data/search/refine",
        expand("data/final/{arm}/metrics.json", arm=ARMS),
        "data/report",
        "data/final/autoqra/export" if "autoqra" in ARMS else [],
        expand("data/sweep/{name}", name=SWEEP["name"]),
