"""A fidelity run: assemble a configuration's model, attach its adapters, train, score.

`FidelityRun(config, fidelity, seed)` returns the *record* of that run: the score on the validation
split (answer loss, or 1 - exact match) with the training losses and timings, or a failure with
its reason (non-finite loss; out of memory, which is retried). Records live in a `RecordStore`
(`autoqra.store.records`) under a key that hashes everything that determines the result: the
configuration, fidelity, seed, the base-model, task and GPTQ-cache fingerprints, the LoRA and
training params, the backend and compute dtype, and the source of the code that computes it. A
record that exists is read, never recomputed.

A seed fixes the data order, each adapter's initialisation (per module name and rank) and the
dropout masks, so two configurations trained under one seed are compared pairwise.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from autoqra import devices, models, quant
from autoqra.data import encode, read_split
from autoqra.params import FinetuneParams, LoraParams
from autoqra.quant import backends, eora
from autoqra.space import Config, Space
from autoqra.store import fingerprint
from autoqra.store.fingerprint import VALUE_CODE
from autoqra.store.process import scratch
from autoqra.store.records import RecordStore
from autoqra.train import scoring
from autoqra.train.loop import train
from autoqra.train.lora import adapter_ok, attach_lora, lora_layers, save_adapter


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class FidelityRun:
    """Runs and caches fidelity evaluations of configurations of one search space."""

    def __init__(self, *, model_dir: str | Path, task_dir: str | Path, caches: dict[int, quant.QuantCache],
                 space: Space, lora: LoraParams, finetune: FinetuneParams, records: str | Path, max_length: int,
                 metric: str = "answer_loss", backend: str = "auto", device: str | None = None,
                 oom_attempts: int = 3, fingerprints: dict[str, str] | None = None, progress: bool = False,
                 legacy_records: str | Path | None = None, calibration: tuple[int, int] | None = None):
        """`lora.init=eora` starts each quantized module's adapter at EoRA's compensation of its quantization
        error, computed on the first `calibration[0]` calibration examples at `calibration[1]` tokens (the
        GPTQ pass's: `quant.calib_samples`, `quant.max_length`; required with eora)."""
        if lora.init != "zero" and calibration is None:
            raise ValueError(f"lora.init={lora.init!r} needs the GPTQ pass's calibration (samples, max_length)")
        self.model_dir, self.space, self.lora, self.ft = Path(model_dir), space, lora, finetune
        self.caches, self.metric, self.progress, self.max_length = caches, metric, progress, max_length
        self.store = RecordStore(records, max_attempts=oom_attempts, legacy=legacy_records)
        self.used: dict[str, dict[str, Any]] = {}  # every record this fidelity run returned, by key (manifests)
        self.device = device or devices.default_device()
        name = ("packed" if self.device.startswith("cuda") else "dequant") if backend == "auto" else backend
        self.dtype = devices.compute_dtype(finetune.dtype, self.device)
        if name == "packed" and self.dtype == torch.float32:
            self.dtype = torch.bfloat16  # GPTQModel's trainable layers compute in bf16/fp16
        missing = sorted(set(space.bits) - set(caches) - {quant.UNQUANTIZED})
        if missing:
            raise ValueError(f"quant.bits: no GPTQ cache for {missing} (run the quantize stage)")
        self.backend = backends.weight_backend(name, self.model_dir, caches, self.device, self.dtype)
        self.task_dir = Path(task_dir)
        val = read_split(task_dir, "val")
        self.val = val[: finetune.val_samples] if finetune.val_samples else val
        fps = fingerprints or {"model": fingerprint.of_dir(self.model_dir), "task": fingerprint.of_dir(task_dir)}
        self._inputs = {"model": fps["model"], "task": fps["task"], "max_length": max_length,
                        "lora": {"alpha_ratio": lora.alpha_ratio, "dropout": lora.dropout,
                                 # the default adds nothing: the keys of zero-initialised runs never change
                                 **({"init": lora.init, "calibration": list(calibration)}
                                    if lora.init != "zero" else {})},
                        # what a run's value depends on: not the arms' list, their seeds or rank (adding
                        # an arm must not invalidate the search's records), nor the steps (in the key)
                        "finetune": {k: v for k, v in asdict(finetune).items()
                                     if k not in ("steps", "dtype", "seeds", "arms", "arm_rank")},
                        "metric": metric, "backend": name, "dtype": str(self.dtype),
                        "targets": sorted(m for ms in space.members.values() for m in ms),
                        "code": fingerprint.of_code(*VALUE_CODE), "platform": devices.platform(self.device)}
        self.steps_trained = 0  # optimizer steps actually run by this fidelity run (cached records add none)
        self.compensation = eora.Compensations(
            self.store, self.model_dir, self.task_dir, caches, calibration, max(space.ranks), self._inputs["targets"],
            {"model": fps["model"], "task": fps["task"]}, progress) if lora.init != "zero" else None

    @cached_property
    def tokenizer(self) -> Any:
        """Loaded on the first run: building a fidelity run (to key, read or open a study) loads nothing."""
        return models.load_tokenizer(self.model_dir)

    @cached_property
    def train_data(self) -> list[tuple[list[int], list[int]]]:
        return [encode(self.tokenizer, ex, self.max_length) for ex in read_split(self.task_dir, "train")]

    @property
    def computed(self) -> int:
        return self.store.computed

    # ------------------------------------------------------------------ keys
    def key(self, config: Config, fidelity: int, seed: int, horizon: int = 0, val_samples: int = 0) -> str:
        used = sorted(set(config.bits) - {quant.UNQUANTIZED})
        caches = {b: self.caches[b].fingerprint for b in used}
        # defaults add nothing (a schedule that ends with the run, the whole validation split), so the
        # keys of runs made before these options existed never change
        extra = {"horizon": horizon} if horizon > fidelity else {}
        if 0 < val_samples < len(self.val):
            extra["val_samples"] = val_samples
        return fingerprint.of_data({**self._inputs, "config": config.key, "fidelity": fidelity, "seed": seed,
                                    "caches": caches, **extra})

    def lookup(self, config: Config, fidelity: int, seed: int, horizon: int = 0,
               val_samples: int = 0) -> dict[str, Any] | None:
        return self.store.read(self.key(config, fidelity, seed, horizon, val_samples))

    def adapter_path(self, key: str) -> Path:
        """Where the adapters kept with record `key` are: in this store or another one it reads, else
        where this store would write them."""
        relative = f"adapters/{key}.safetensors"
        return self.store.find(relative) or self.store.root / relative

    # ------------------------------------------------------------------ evaluation
    def __call__(self, config: Config, fidelity: int, seed: int, horizon: int = 0, val_samples: int = 0,
                 keep_adapter: bool = False, lower: tuple[int, ...] = ()) -> dict[str, Any]:
        """The record of (config, fidelity, seed): read if it exists, computed otherwise. With a
        `horizon` above `fidelity` the learning-rate schedule spans `horizon` steps and the run is cut
        after `fidelity` of them (the first part of a longer run, rather than a whole short one); its
        training state is kept (`state_path`), and a run of the same configuration, seed and horizon at a
        higher fidelity whose `lower` fidelities include this one continues from it, training only the
        extra steps: the same record as the uncut run, for less. `val_samples` scores the first that
        many validation examples only (0: all). `keep_adapter` saves the trained adapters next to the
        record (`adapter_path`), for a final evaluation."""
        self.space.check(config)
        if horizon and horizon < fidelity:
            raise ValueError(f"horizon={horizon}: must be 0 or at least fidelity={fidelity}")
        key = self.key(config, fidelity, seed, horizon, val_samples)
        require = (lambda r: r["status"] != "ok" or adapter_ok(self.adapter_path(key))) if keep_adapter else None
        own = self.store.root / "adapters" / f"{key}.safetensors"
        record, _ = self.store.get(key, lambda: self._run(config, fidelity, seed, horizon, val_samples,
                                                          own if keep_adapter else None, lower),
                                   require=require)
        self.used[key] = record
        return record

    def workdir(self) -> Any:
        """A temporary folder for one run's files (a packed checkpoint), under the cache's `tmp/`, named
        after this worker: whoever starts next removes the folders of workers that died (a SIGKILL
        leaves no clean-up behind)."""
        return scratch(self.store.root / "tmp")

    def assemble(self, config: Config, workdir: Path | None = None, seed: int | None = None,
                 start: bool = True) -> Any:
        """The configuration's quantized model with its adapters attached (checked), started as `lora.init`
        says; `start=False` leaves them at PEFT's start, for a caller that loads trained adapters over them."""
        bits, ranks = self.space.per_module(config)
        model = self.backend.assemble(bits, workdir)
        model = attach_lora(model, ranks, self.lora.alpha_ratio, self.lora.dropout, seed=seed)
        if self.compensation is not None and start:
            adapted = {m: b for m, b in bits.items() if b != quant.UNQUANTIZED and ranks.get(m, 0) > 0}
            factors = self.compensation(set(adapted.values()))
            by_module = {m: factors[b][m] for m, b in adapted.items()}
            if self.lora.init == "random":  # the control: EoRA's norms, random directions
                by_module = eora.norm_matched(by_module, ranks, seed or 0)
            eora.lora_init(lora_layers(model), by_module)
        return model

    def state_path(self, config: Config, fidelity: int, seed: int, horizon: int) -> Path:
        """Where the training state of a cut run is kept: adapters, optimizer, random state, losses."""
        return self.store.root / "states" / f"{self.key(config, fidelity, seed, horizon)}.pt"

    def _resume(self, model: Any, config: Config, fidelity: int, seed: int, horizon: int,
                lower: tuple[int, ...]) -> tuple[int, dict[str, Any] | None]:
        """The highest of the `lower` fidelities whose kept state exists, loaded into `model` (adapters)
        and torch (random state); (0, None) when there is none."""
        for f in sorted((f for f in lower if f < fidelity), reverse=True):
            path = self.state_path(config, f, seed, horizon)
            if path.exists():
                state = torch.load(path, map_location=self.device, weights_only=True)
                params = dict(model.named_parameters())
                with torch.no_grad():
                    for name, tensor in state["lora"].items():
                        params[name].copy_(tensor)
                torch.set_rng_state(state["rng"].cpu())
                return f, state
        return 0, None

    def _keep(self, model: Any, path: Path, optimizer: dict, rng: torch.Tensor, losses: list[float]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        torch.save({"lora": lora, "optimizer": optimizer, "rng": rng, "losses": losses}, tmp)
        os.replace(tmp, path)

    def _run(self, config: Config, fidelity: int, seed: int, horizon: int = 0, val_samples: int = 0,
             adapter: Path | None = None, lower: tuple[int, ...] = ()) -> dict[str, Any]:
        start = time.perf_counter()
        record: dict[str, Any] = {"config": config.to_dict(), "config_key": config.key, "fidelity": fidelity,
                                  "seed": seed, "horizon": max(horizon, fidelity), "backend": self.backend.name,
                                  "device": self.device, "dtype": str(self.dtype), "metric": self.metric,
                                  "status": "ok", "reason": None}
        try:
            with self.workdir() as tmp:
                torch.manual_seed(seed)  # dropout masks
                if self.device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                model = self.assemble(config, Path(tmp), seed=seed)
                start_step, state = self._resume(model, config, fidelity, seed, horizon, lower)
                cut = horizon > fidelity  # the start of a longer run: keep its state for a continuation
                result = train(model, self.train_data, self.tokenizer.pad_token_id, fidelity, seed,
                               batch_size=self.ft.batch_size, lr=self.ft.lr, warmup_ratio=self.ft.warmup_ratio,
                               schedule=self.ft.schedule, weight_decay=self.ft.weight_decay,
                               max_grad_norm=self.ft.max_grad_norm,
                               gradient_checkpointing=self.ft.gradient_checkpointing, progress=self.progress,
                               on_step=self._count_step, horizon=horizon, start=start_step,
                               optimizer_state=state["optimizer"] if state else None, keep_optimizer=cut)
                losses = (state["losses"] if state else []) + result.losses
                record.update(train_steps=result.steps, train_s=round(result.seconds, 3), train_loss=losses)
                if start_step:
                    record["continued_from"] = start_step
                if cut and not result.failure:
                    self._keep(model, self.state_path(config, fidelity, seed, horizon), result.optimizer,
                               torch.get_rng_state(), losses)
                if self.device.startswith("cuda"):
                    record["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
                if result.failure:
                    return {**record, "status": "failed", "reason": result.failure, "score": None,
                            "wall_s": round(time.perf_counter() - start, 3)}
                record.update(self._score(model, val_samples))
                if adapter is not None:
                    save_adapter(model, adapter)
        except Exception as exc:  # out of memory is a result (retried later), not a crash
            if not is_oom(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return {**record, "status": "failed", "reason": f"out of memory: {exc}"[:500], "score": None,
                    "transient": True, "wall_s": round(time.perf_counter() - start, 3)}
        if not torch.isfinite(torch.tensor(record["score"])):
            record.update(status="failed", reason=f"non-finite validation score ({record['score']})", score=None)
        record["wall_s"] = round(time.perf_counter() - start, 3)
        return record

    def _count_step(self) -> None:
        self.steps_trained += 1

    def _score(self, model: Any, val_samples: int = 0) -> dict[str, Any]:
        start = time.perf_counter()
        val = self.val[:val_samples] if val_samples else self.val
        per = scoring.per_example_nll(model, self.tokenizer, val, self.max_length, self.ft.eval_batch_size)
        out: dict[str, Any] = {"answer_loss": scoring.pooled(per), "val_examples": len(val),
                               "val_nll": [[round(a, 6), n] for a, n in per]}
        if self.metric == "exact_match":
            em = scoring.exact_match(model, self.tokenizer, val, self.max_length, self.ft.eval_batch_size)
            out.update(exact_match=em["exact_match"], exact_match_se=em["exact_match_se"])
            out["score"] = 1.0 - em["exact_match"]
        else:
            out["score"] = out["answer_loss"]
        out["eval_s"] = round(time.perf_counter() - start, 3)
        return out
