# AutoQRA workflow. Parameters: `params/` composed by Hydra with `--config` overrides, e.g.
#   snakemake --cores all --config experiment=smoke 'search={population: 16}'
# Each rule is a thin shell call of `python -m stages.<name>`, its command, params and code taken from
# stages/registry.py, from which dvc.yaml is generated too: both orchestrators run the same commands.
from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/quantize.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/final.smk"
include: "workflow/rules/sweep.smk"


rule all:
    default_target: True
    input:
        "data/prepare",
        QUANTIZE,
        "data/profile",
        "data/search/evolve",
        "data/search/refine",
        expand("data/final/{arm}/metrics.json", arm=ARMS),
        "data/report",
        "data/final/autoqra/export" if "autoqra" in ARMS else [],
        expand("data/sweep/{name}", name=SWEEP["name"]),
