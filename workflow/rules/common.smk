# What every rule file uses: the composed params, the values that shape the DAG, and the registry's
# params, code inputs and shell commands (stages/registry.py: each command is written once, there).
import sys

sys.path.insert(0, workflow.basedir)

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from autoqra.arms import SEARCH_OUTPUTS
from autoqra.params import ParamError
from autoqra.params.rules import stage_workers
from autoqra.space import BIT_CHOICES
from stages import params as P
from stages.registry import STAGES, snakemake_shell, worker_params

try:
    PARAMS = P.compose(P.flatten_overrides(config))
    VALIDATED = P.validated(PARAMS)
except ParamError as exc:
    raise WorkflowError(f"invalid parameter: {exc}") from None
validate(PARAMS, "../schemas/params.schema.json")
PARAMS_FILE = P.params_file(PARAMS)

BITS = PARAMS["quant"]["bits"]
QUANTIZE = expand("data/quantize/b{bits}", bits=BITS)  # every GPTQ cache
ARMS = PARAMS["finetune"]["arms"]
# worker jobs per search stage (stage 2 runs no more than its proposals' seeds: `stage_workers`)
WORKERS = {stage: stage_workers(VALIDATED, stage) for stage in ("evolve", "refine")}
# the chain every result waits for runs before the arms that wait for nothing but the profile
PRIORITY = {"search": 10}
SWEEP = PARAMS["sweep"]
CELLS = expand("data/sweep/cells/{ablation}-s{seed}-b{budget}", ablation=SWEEP["ablations"], seed=SWEEP["seeds"],
               budget=SWEEP["budgets"])


def stage_params(name):
    """The values of the params a stage reads: a change re-runs the rule (rerun trigger `params`)."""
    return P.section(PARAMS, STAGES[name].params)


def worker_stage_params(name):
    """What one worker job of search stage `name` reads: a key only its gather job reads re-runs only that."""
    return P.section(PARAMS, worker_params(name))


def stage_code(name):
    return list(STAGES[name].code)


def stage_shell(name, *wildcards, extra="", worker=False):
    return snakemake_shell(name, PARAMS, wildcards, extra=extra, worker=worker)
