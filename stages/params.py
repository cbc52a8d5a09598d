"""Parameter composition shared by the Snakefile, the stages and the `autoqra` command.

`params/` is a Hydra config directory; `params.yaml` is its composition. Snakemake passes
overrides as nested `--config` maps (it rejects dotted keys), so they are flattened into Hydra's
dotted override syntax here before composing. Unknown keys are reported in one line naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from autoqra.params import ParamError, Params, load_params
from autoqra.store import fingerprint as fp

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "params"
GROUPS = ("model", "task", "quant", "lora", "profile", "search", "finetune", "evaluate", "budget", "sweep",
          "experiment")


def _format(value: Any) -> str:
    """A value in Hydra's override grammar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_format(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value)


def _coerce(value: Any) -> Any:
    """Snakemake hands nested `--config` leaves over as strings ('-3', '5'): read them as YAML scalars."""
    if isinstance(value, list):
        return [_coerce(v) for v in value]
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if isinstance(parsed, (int, float, bool, list)) or parsed is None:
            return parsed
        try:
            return float(value)  # YAML 1.1 reads '1e-3' as a string
        except ValueError:
            return value
    return value


def flatten_overrides(config: dict[str, Any], prefix: str = "") -> list[str]:
    """`{'search': {'population': 16}, 'experiment': 'smoke'}` -> `['experiment=smoke', 'search.population=16']`.

    A string value of a top-level group name selects a group option (`model=tiny`); every other
    leaf becomes a dotted value override. Group selections come first, as Hydra needs them to be
    applied before the values they contain are overridden.
    """
    groups, values = [], []
    for key, value in config.items():
        value = _coerce(value)
        dotted = f"{prefix}{key}"
        if not prefix and key in GROUPS and isinstance(value, str):
            groups.append(f"{key}={value}")
        elif isinstance(value, dict) and value:
            values.extend(flatten_overrides(value, dotted + "."))
        else:
            values.append(f"{dotted}={_format(value)}")
    return groups + values


def _get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(part)
        node = node[part]
    return node


def _hydra_compose(overrides: list[str]) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def compose(overrides: list[str] = ()) -> dict[str, Any]:
    """Compose `params/` with Hydra overrides; raise `ParamError` naming any unknown key or option."""
    overrides = list(overrides)
    selections = [o for o in overrides if o.split("=", 1)[0] in GROUPS]
    for sel in selections:
        group, option = sel.split("=", 1)
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        if option.strip("'") not in options:
            raise ParamError(f"{group}={option}: unknown option (allowed: {', '.join(options)})")
    base = _hydra_compose(selections)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in GROUPS:
            continue
        try:
            _get(base, key)
        except KeyError:
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            try:
                allowed = ", ".join(_get(base, parent)) if parent else ", ".join(base)
            except KeyError:
                allowed = ", ".join(base)
            raise ParamError(f"{key}: unknown key (allowed{' in ' + parent if parent else ''}: {allowed})") from None
    return _hydra_compose(overrides)


def to_yaml(tree: dict[str, Any]) -> str:
    """YAML text exactly as DVC's Hydra integration writes `params.yaml`."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(tree))


def validated(tree: dict[str, Any]) -> Params:
    """Typed params, or a one-line `ParamError`."""
    return load_params(tree)


def read(path: str | Path) -> dict[str, Any]:
    """A composed params file as a dict."""
    with open(path) as fh:
        return yaml.safe_load(fh)


def section(tree: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The part of the params a stage declares it reads (`model`, `quant.bits`, ...), as a flat dict."""
    return {k: _get(tree, k) for k in keys}


def fingerprint(obj: Any) -> str:
    """Stable short hash of JSON-serialisable data."""
    return fp.of_data(obj)[:16]


def params_file(tree: dict[str, Any], root: Path = ROOT) -> str:
    """Where a stage should read `tree` from: `params.yaml` when it holds exactly this composition,
    otherwise a content-addressed copy under `.snakemake/autoqra/` (never the user's params.yaml)."""
    text = to_yaml(tree)
    default = root / "params.yaml"
    if default.exists() and read(default) == tree:
        return "params.yaml"
    path = root / ".snakemake" / "autoqra" / f"params-{fingerprint(tree)}.yaml"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(path.relative_to(root))
