"""The parameter sections: one dataclass per `params.yaml` section, validated at construction.

Every value the pipeline uses comes from `params/` (composed into `params.yaml`); `load_params` turns
that plain dict into these dataclasses (`autoqra.params.fields.from_dict`). A key a dict leaves out (the
library's callers) takes the dataclass default, which is the default composition's value
(tests/test_params.py keeps them equal), except `task.system_prompt`: null (the chat template decides)
for a user's task, '' in the synthetic one. The workflow (the schema, Snakemake, DVC) requires every key:
a group file of one's own starts as a copy of the default one. Cross-field rules live in each
section's `__post_init__` and in `Params.__post_init__`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autoqra.arms import uniform_pattern
from autoqra.params import rules
from autoqra.params.fields import ParamError, from_dict, spec
from autoqra.params.final import ABLATIONS, EvaluateParams, ExportParams, SweepParams
from autoqra.params.sources import ModelParams, check_task_source
from autoqra.space import BIT_CHOICES, GRANULARITIES

GROUP_SIZES = (16, 32, 64, 128, 256)  # the GPTQ group sizes offered


@dataclass
class TaskParams:
    """The fine-tuning task and its splits."""

    source: str = spec("synthetic", help="'synthetic' (built-in generator), a local .jsonl/.csv/.parquet "
                       "file, or 'hf:<dataset id>' from the local datasets cache")
    families: list[str] = spec(["arithmetic", "strings", "lists", "units"],
                               help="synthetic task families", items={"choices": ["arithmetic", "strings",
                                                                                  "lists", "units"]},
                               min_items=1)
    train: int = spec(2000, help="train examples", min=1)
    val: int = spec(200, help="validation examples (the search scores on these)", min=1)
    test: int = spec(200, help="held-out test examples (final evaluation only)", min=1)
    calib: int = spec(128, help="calibration examples (GPTQ and priors)", min=1)
    max_length: int = spec(128, help="tokens per example in fine-tuning and scoring: a longer one loses the "
                           "start of its prompt, never an answer token", min=8)
    system_prompt: str | None = spec(None, help="system message of every example; null: the model's chat "
                                     "template decides (SmolLM2's adds a 16-token default prompt)")
    prompt_column: str = spec("prompt", help="prompt column of user data")
    answer_column: str = spec("answer", help="answer column of user data")
    seed: int = spec(0, help="seed of generation and splitting", min=0)

    def __post_init__(self) -> None:
        check_task_source(self.source)


@dataclass
class QuantParams:
    """GPTQ settings: the bit ladder and how each bit-width is quantized."""

    bits: list[int] = spec([2, 3, 4, 8], help="candidate bit-widths, ascending (16 = leave unquantized)",
                           items={"choices": list(BIT_CHOICES)}, min_items=1, increasing=True)
    group_size: int = spec(64, help="GPTQ group size (must divide every target's in_features)",
                           choices=list(GROUP_SIZES))
    sym: bool = spec(True, help="symmetric quantization")
    desc_act: bool = spec(False, help="act-order (quantize columns by decreasing activation)")
    damp: float = spec(0.01, help="GPTQ dampening (fraction of the mean Hessian diagonal)",
                       min=0.0, max=1.0, exclusive_min=True)
    calib_samples: int = spec(32, help="calibration sequences (from the calib split)", min=1)
    max_length: int = spec(256, help="tokens per calibration sequence", min=8)
    eval_examples: int = spec(0, help="validation examples the quantize stage scores each quantized model on, for "
                              "orientation (0: none; 64 cost 19 s per bit-width on 2 cores, a sixth of GPTQ itself)",
                              min=0)
    targets: list[str] = spec(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                              help="target linears inside each block (quantized and adapted)",
                              min_items=1, unique=True)


@dataclass
class LoraParams:
    """The LoRA rank ladder and adapter hyper-parameters."""

    ranks: list[int] = spec([4, 8, 16], help="candidate ranks, ascending (0 = no adapter on that unit)",
                            items={"min": 0, "max": 1024}, min_items=1, increasing=True)
    alpha_ratio: float = spec(2.0, help="lora_alpha = alpha_ratio * rank", min=0.0, exclusive_min=True)
    dropout: float = spec(0.0, help="LoRA dropout (0: measured no better, a quarter slower; docs/precision.md)",
                          min=0.0, max=0.9)
    init: str = spec("eora", help="how each adapter starts: 'zero' (PEFT's: B = 0, the adapter adds nothing at "
                     "step 0) or 'eora' (a quantized module's adapter starts at EoRA's compensation of its "
                     "quantization error, from the GPTQ calibration set; computed once per bit-width and kept "
                     "in the record cache), or 'random', eora's control: the same factors' norms in random "
                     "directions (what eora gains over it is the compensation, not a nonzero start). With eora "
                     "the profile measures each unit through its compensation at the ladder's lowest rank",
                     choices=["zero", "eora", "random"])


@dataclass
class ProfileParams:
    """Importance priors (the profile stage)."""

    iq_method: str = spec("measured", help="the quantization prior: 'measured' (each search unit's answer-loss "
                          "increase, quantized alone at each bit-width: one forward pass per unit and bit-width, "
                          "minutes), or from one backward pass per bit-width in seconds, summed over the unit's "
                          "linears: 'taylor' (first + second order) or 'fisher' (second order only); on the "
                          "embedded model the fast ones rank less well (docs/method.md)",
                          choices=["measured", "taylor", "fisher"])
    samples: int = spec(32, help="calibration sequences whose answer tokens the priors are measured on", min=1)
    batch_size: int = spec(8, help="batch size of the profile passes", min=1)
    max_length: int = spec(256, help="tokens per profile sequence", min=8)


@dataclass
class RefineParams:
    """Stage 2: trust-region Bayesian refinement (each proposal evaluated at the top rung's fidelity and seeds)."""

    evaluations: int = spec(4, help="proposals to evaluate (0: stage 1's pick is final)", min=0)
    candidates: int = spec(256, help="candidates drawn inside the region per proposal", min=1)
    kernel: str = spec("auto", help="GP kernel; 'auto' keeps the one with the best held-out rank correlation",
                       choices=["auto", "additive", "ordinal", "categorical"])
    acquisition: str = spec("logei", help="qLogNoisyExpectedImprovement or a Thompson sample",
                            choices=["logei", "thompson"])
    length_init: int = spec(4, help="initial radius: units that may differ from the centre", min=1)
    length_min: int = spec(1, help="radius below which the region restarts", min=1)
    length_max: int = spec(16, help="largest radius", min=1)
    success_tolerance: int = spec(2, help="consecutive successes that grow the region", min=1)
    failure_tolerance: int = spec(3, help="consecutive failures that shrink the region", min=1)

    def __post_init__(self) -> None:
        if not self.length_min <= self.length_init <= self.length_max:
            raise ParamError(f"search.refine.length_init={self.length_init}: must lie between length_min="
                             f"{self.length_min} and length_max={self.length_max}")


@dataclass
class SearchParams:
    """Both search stages."""

    granularity: str = spec("block", help="unit of choice: one (bits, rank) per block, per group of linears a "
                            "serving engine fuses (q/k/v, gate/up), or per linear", choices=list(GRANULARITIES))
    population: int = spec(14, help="configurations in generation 0", min=2)
    generations: int = spec(4, help="generations of stage 1", min=1)
    offspring: int = spec(6, help="children evaluated per generation (Thompson draws, then the performance "
                          "model's best)", min=1)
    thompson: float = spec(0.5, help="share of each generation's offspring (rounded up) that are the exact budget "
                           "optima of Thompson draws from the performance model, new configurations only; the rest "
                           "are the bred children it predicts best", min=0.0, max=1.0)
    candidates: int = spec(200, help="children bred per generation for the performance model to screen (its "
                           "best `offspring` of them, after the Thompson draws, are evaluated)", min=1)
    fidelities: list[int] = spec([8, 16, 48], help="successive-halving rungs in fine-tuning steps",
                                 items={"min": 1}, min_items=1, increasing=True)
    eta: int = spec(2, help="successive-halving ratio (best 1/eta of a rung are promoted)", min=2)
    max_steps: int = spec(800, help="compute budget of stage 1 in training steps, a promotion counting only "
                          "the steps it adds to the lower rung's run (0 = unlimited)", min=0)
    metric: str = spec("answer_loss", help="search objective on the validation split",
                       choices=["answer_loss", "exact_match"])
    storage: str | None = spec(None, help="Optuna storage URL, or env:NAME to read it from an environment "
                                "variable (a password stays out of params files); null = a journal file in the "
                                "record cache (data/records/studies/<stage>.journal)")
    workers: int = spec(2, help="search workers sharing one study (each a job under Snakemake, a process "
                        "under DVC), the same evaluations as one", min=1)
    seeds_per_rung: list[int] = spec([1, 1, 1], help="training seeds per configuration at each rung (paired: "
                                     "every configuration sees the same seeds; the score is their mean)",
                                     items={"min": 1}, min_items=1)
    val_per_rung: list[int] = spec([], help="validation examples scored at each rung (0 or an empty list: all); "
                                   "fewer at the low rungs saves time where ranking allows", items={"min": 0})
    max_failures: int = spec(10, help="consecutive failed evaluations that stop a search stage", min=1)
    oom_attempts: int = spec(3, help="attempts of an evaluation that ran out of memory (a co-worker's fault?)",
                             min=1)
    ablation: str = spec("none", help="switch a part of the search off, or replace it, at the same step budget: "
                         "no_priors (generation 0 random feasible, mutation uniform), no_surrogate (no performance "
                         "model: offspring drawn at random, filled under the priors' prices), single_fidelity "
                         "(every evaluation at the top rung), no_refine (stage 1's pick is final), random (random "
                         "feasible search), tpe (Optuna's TPE, the budget as a constraint); random and tpe get stage "
                         "1's and refine's steps and replace both",
                         choices=list(ABLATIONS))
    promotion: str = spec("raw", help="successive halving's promotion: 'raw' (a rung's own mean) or 'model' (a GP "
                          "over configuration and fidelity predicts each member's top-rung score)",
                          choices=["raw", "model"])
    warm_start: str = spec("uniforms", help="generation 0 beside the priors' configurations: the 'uniforms' that "
                           "fit, or also ('boundary', beyond the population) the rank-only, bit-only and mixed "
                           "repairs of the uniforms just over the budget",
                           choices=["uniforms", "boundary"])
    frontier_seeds: int = spec(2, help="training seeds under which each frontier uniform is scored to choose "
                               "best_uniform (at least the top rung's; its first seeds are the search's, so their "
                               "records are shared)", min=1)
    pick_confidence: float = spec(0.95, help="the posterior probability (the performance model's, joint) with "
                                  "which a configuration must beat greedy to be the answer instead of it; the "
                                  "answer is read from the studies, so a change re-runs no evaluation",
                                  min=0.5, max=1.0)
    refine: RefineParams = field(default_factory=RefineParams, metadata={"help": "stage 2"})
    backend: str = spec("auto", help="weight backend of fidelity runs ('auto': packed on GPU, dequant on CPU)",
                        choices=["auto", "packed", "dequant"])
    frontier: str = spec("maximal", help="uniform configurations the evolve stage scores at the arms' steps to "
                         "choose best_uniform: 'all' that fit the budget, or the 'maximal' ones (none with both "
                         "more bits and more rank fits: a dominated one is assumed to score no better, and is not "
                         "trained)",
                         choices=["maximal", "all"])


@dataclass
class FinetuneParams:
    """Training and evaluation settings shared by fidelity runs and the final fine-tune."""

    steps: int = spec(48, help="steps of the final fine-tune of every arm", min=1)
    batch_size: int = spec(8, help="sequences per step", min=1)
    lr: float = spec(5e-4, help="peak learning rate (AdamW)", min=0.0, exclusive_min=True)
    warmup_ratio: float = spec(0.1, help="fraction of steps of linear warm-up", min=0.0, max=1.0)
    schedule: str = spec("cosine", help="decay after warm-up", choices=["cosine", "linear", "constant"])
    weight_decay: float = spec(0.0, help="AdamW weight decay", min=0.0)
    max_grad_norm: float = spec(1.0, help="gradient clipping (0 = off)", min=0.0)
    gradient_checkpointing: bool = spec(False, help="recompute activations in the backward pass")
    eval_batch_size: int = spec(16, help="sequences per evaluation batch", min=1)
    val_samples: int = spec(0, help="validation examples scored per run (0 = all)", min=0)
    dtype: str = spec("auto", help="compute dtype of the frozen base: 'auto' = bf16 on a GPU and on CPUs with "
                      "native bf16, else fp32 (adapters and optimizer state are always fp32)",
                      choices=["auto", "bf16", "fp32"])
    seeds: list[int] = spec([100, 101, 102], help="training seeds of every final arm (paired: the same for each "
                            "arm; fresh: none a search stage trained under)", items={"min": 0}, min_items=1,
                            unique=True)
    arms: list[str] = spec(["autoqra", "fp_lora", "best_uniform", "greedy", "sequential", "uniform4_r16"],
                           help="final arms: autoqra, fp_lora, best_uniform, greedy, prior, sequential, "
                           "uniform<bits>_r<rank>", min_items=1, unique=True)
    arm_rank: int = spec(16, help="the uniform rank of the fp_lora arm and the largest of the sequential arm", min=1)


@dataclass
class BudgetParams:
    """The memory budget every configuration must meet."""

    kind: str = spec("relative", help="bytes | bits_per_param | relative (to a reference arm)",
                     choices=["bytes", "bits_per_param", "relative"])
    value: float = spec(1.0, help="bytes, average bits per target parameter, or factor of the reference",
                        min=0.0, exclusive_min=True)
    reference: str = spec("uniform3_r16", help="reference arm of a relative budget, 'uniform{bits}_r{rank}' "
                          "with bits and rank on the ladders",
                          pattern=uniform_pattern(BIT_CHOICES))


@dataclass
class Params:
    """The whole composed `params.yaml`."""

    seed: int = spec(0, help="seed of training and search", min=0)
    model: ModelParams = field(default_factory=ModelParams, metadata={"help": "base model"})
    task: TaskParams = field(default_factory=TaskParams, metadata={"help": "task data"})
    quant: QuantParams = field(default_factory=QuantParams, metadata={"help": "quantization"})
    lora: LoraParams = field(default_factory=LoraParams, metadata={"help": "adapters"})
    profile: ProfileParams = field(default_factory=ProfileParams, metadata={"help": "priors"})
    search: SearchParams = field(default_factory=SearchParams, metadata={"help": "search"})
    finetune: FinetuneParams = field(default_factory=FinetuneParams, metadata={"help": "training"})
    budget: BudgetParams = field(default_factory=BudgetParams, metadata={"help": "memory budget"})
    evaluate: EvaluateParams = field(default_factory=EvaluateParams, metadata={"help": "final evaluation"})
    sweep: SweepParams = field(default_factory=SweepParams, metadata={"help": "grid of runs (data/sweep/)"})
    export: ExportParams = field(default_factory=ExportParams, metadata={"help": "the export and where it is served"})

    def __post_init__(self) -> None:
        rules.check(self)


def load_params(data: dict[str, Any]) -> Params:
    """Validate a composed `params.yaml` dict and return typed parameters."""
    return from_dict(Params, data)


