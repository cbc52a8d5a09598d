"""sweep: a grid of pipeline runs (cells) and one table over them.

`cell`: one cell, the composed params with `search.ablation`, `seed` and `budget.value` set, written to
`<out>/params.yaml`; it runs evolve, refine and, for each of `sweep.arms`, finetune and evaluate into
`<out>/` (`autoqra.pipeline.sweep.run_cell`), reading the shared GPTQ caches and priors; its records go to the
one record cache (`--records`) and its studies to the cache's journal `studies/cells/<cell>.journal`: a
cell trains only what no single run and no other cell has trained. `<out>/metrics.json` gathers what the summary needs.

`summary`: every cell of the sweep into `<out>/summary.csv`, `summary.md`, `score_vs_budget.png` and
`best_so_far.png` (`autoqra.report.sweep`).
"""

from __future__ import annotations

from pathlib import Path

from autoqra.pipeline.sweep import run_cell
from autoqra.report import sweep as summary
from autoqra.sweep import cell_name, cell_tree, cells
from stages import common
from stages import params as P


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0], dirs=False)
    sub = ap.add_subparsers(dest="command", required=True)
    cell = sub.add_parser("cell", help="run one cell")
    for name, (default, text) in common.DIRS.items():
        cell.add_argument(f"--{name}", default=default, help=text)
    cell.add_argument("--ablation", required=True)
    cell.add_argument("--seed", type=int, required=True)
    cell.add_argument("--budget", type=float, required=True)
    cell.add_argument("--out", required=True, help="the cell's folder (data/sweep/cells/<cell>)")
    gather = sub.add_parser("summary", help="gather the cells into one table")
    gather.add_argument("--cells", default="data/sweep/cells")
    gather.add_argument("--out", required=True, help="data/sweep/<name>")
    for sp in (cell, gather):
        sp.add_argument("--params", default="params.yaml")
        sp.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    p = common.start(args)
    tree, out = P.read(args.params), Path(args.out)
    if args.command == "summary":
        if not p.sweep.name:
            raise SystemExit(f"error: sweep.name=[] in {args.params}: no sweep to summarise (e.g. sweep=ablations)")
        with common.user_errors():
            print(summary.write(p, tree, Path(args.cells), out))
        return
    grid = {(c["ablation"], c["seed"], float(c["budget"])) for c in cells(tree)}
    if (args.ablation, args.seed, args.budget) not in grid:
        raise SystemExit(f"error: cell {cell_name(args.ablation, args.seed, args.budget)}: not in the sweep of "
                         f"{args.params} (cells: {', '.join(c['name'] for c in cells(tree))})")
    tree = cell_tree(tree, args.ablation, args.seed, args.budget)
    with common.user_errors():
        cell_p = P.validated(tree)
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.yaml").write_text(P.to_yaml(tree))
    dirs = {name: getattr(args, name) for name in common.DIRS}
    common.finish(out / "metrics.json", lambda: run_cell(cell_p, out / "params.yaml", dirs, out, args.threads))


if __name__ == "__main__":
    main()
