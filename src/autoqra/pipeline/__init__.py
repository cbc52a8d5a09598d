"""The composition layer: one module per stage of work, each from parameters and folders to outputs and
metrics, built on one `Setup` (space, memory model, budget, priors, the validation fidelity run, the
studies). Nothing below this layer imports it; the stage entry points in `stages/` call it.

- `prepare`, `quantize`, `profile`: the model and task, the GPTQ caches, the priors;
- `setup`: the `Setup` every later stage works with; `fidelity`: the validation fidelity run (`FidelityRun`);
- `search`: the evolve and refine stages (workers' ask/tell loops, then outputs); `workers`: how many run;
- `arms`: the final arms, trained under fresh seeds and tested; `export`: the pick as a checkpoint;
- `report`: the run's table and pictures; `sweep`: one cell of a grid of runs.
"""
