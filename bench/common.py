"""What the benchmarks share: offline environment and the default target linears."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the stages' helpers, for the params

from autoqra.store.process import environment  # noqa: E402

environment()

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def search_parser(description: str, needs: str):
    """Arguments of the benchmarks that reuse a finished evolve stage (its params, folders, record cache)."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepare", default="data/prepare")
    ap.add_argument("--quantize", default="data/quantize")
    ap.add_argument("--profile", default="data/profile")
    ap.add_argument("--search", default="data/search", help="the search's record cache lives here")
    ap.add_argument("--out", default="data/search/evolve", help=f"folder with the evolve stage's {needs}")
    return ap


def training_parser(description: str, steps: int):
    """Arguments of the benchmarks that train one uniform configuration from a `make run` workspace's
    prepare and quantize folders: `--bits` r`--rank` for `--steps` steps."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--prepare", default="data/prepare")
    ap.add_argument("--quantize", default="data/quantize")
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    return ap


def search_setup(args, needs: str):
    """(params, the evolve stage's Setup, path of `needs` in --out), with one-line errors first."""
    from autoqra.pipeline.setup import Setup, check_inputs

    path = Path(args.out) / needs if needs else None
    if path is not None and not path.exists():
        raise SystemExit(f"error: --out {args.out}: no {needs} (run the evolve stage)")
    p = load(args.params)
    dirs = {"prepare": args.prepare, "quantize": args.quantize, "profile": args.profile, "search": args.search}
    try:
        check_inputs(p, dirs)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    return p, Setup(p, dirs, progress=True), path


def load(path: str):
    """A composed params file, validated, or a one-line error."""
    from autoqra.params import ParamError, load_file

    try:
        return load_file(path)
    except ParamError as exc:
        raise SystemExit(f"error: {exc}") from None


def synthetic_problem(units: int):
    """(space, budget) of the synthetic-objective benches: `units` blocks of one linear each, widths
    64/128/192 in turn, bits {2, 3, 4, 8} x ranks {4, 8, 16}, budget = the memory of uniform 3-bit r8."""
    from autoqra.memory import MemoryModel, ModelSpec, ModuleShape, Training, make_budget
    from autoqra.space import Space

    shapes = tuple(ModuleShape(f"model.layers.{i}.mlp.up_proj", 64 * (1 + i % 3), 128) for i in range(units))
    spec = ModelSpec(shapes, other_params=100, hidden=64, intermediate=128, layers=units, heads=4, kv_heads=2,
                     vocab=100)
    space = Space.from_modules([m.name for m in shapes], "block", [2, 3, 4, 8], [4, 8, 16])
    return space, make_budget("relative", 1.0, "uniform3_r8", MemoryModel(spec, 64, Training(1, 4)), space)


def test_examples(p, task_dir: Path, n: int) -> list[dict]:
    """`n` test examples: the prepared test split, extended by the task's generator under another seed with
    every prompt of the prepared splits left out (synthetic tasks only): as the split's, disjoint from what
    is trained, validated and calibrated on."""
    from autoqra import data

    test = data.read_split(task_dir, "test")
    if n <= len(test):
        return test[:n]
    if p.task.source != "synthetic":
        raise SystemExit(f"error: --test {n}: the prepared test split holds {len(test)} and task.source="
                         f"{p.task.source!r} cannot make more (synthetic only)")
    seen = {ex["prompt"] for s in data.SPLITS for ex in data.read_split(task_dir, s)}
    extra = data.generate(p.task.families, {"train": 0, "val": 0, "test": 4 * n, "calib": 0}, p.task.seed + 1000)
    more = [ex for ex in extra["test"] if ex["prompt"] not in seen][: n - len(test)]
    for i, ex in enumerate(more):
        ex["id"] = f"test-extra-{i:05d}"
    return test + data.with_system(more, p.task.system_prompt)


def trained_test(ev, config, steps: int, seeds, test: list[dict], test_fp: str, evaluate, label: str = ""):
    """`config` trained `steps` steps under each of `seeds` and scored on `test` (fingerprint `test_fp`):
    ({seed: per-example contributions to the test answer loss}, {seed: validation score}), every training
    and every scoring a record of `ev`'s store (an evaluation made once is read, never repeated)."""
    from autoqra import stats
    from autoqra.store import fingerprint
    from autoqra.train import evaluation

    per_seed, val, built = {}, {}, []
    with ev.workdir() as tmp:
        for seed in seeds:
            run = ev(config, steps, seed, keep_adapter=True)
            if run["status"] != "ok":
                print(f"{label} seed {seed}: {run['status']} ({run.get('reason')})", flush=True)
                continue
            adapter = ev.adapter_path(run["key"])
            key = fingerprint.of_data([evaluation.evaluation_key(run["key"], ev.max_length, evaluate, adapter),
                                       test_fp])
            rec, _ = ev.store.get(key, lambda a=adapter: evaluation.score_seed(
                ev, config, a, test, ev.max_length, evaluate, Path(tmp), built))
            per_seed[seed], val[seed] = stats.contributions(rec["scores"]["answer_nll"]), run["score"]
            print(f"{label} seed {seed}: val {run['score']:.4f} test {rec['scores']['answer_loss']:.4f} "
                  f"(train {run.get('train_s', 0):.0f} s)", flush=True)
    return per_seed, val
