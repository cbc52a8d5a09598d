"""A fidelity run, and the record cache that makes sure none is ever computed twice.

`Evaluator(config, fidelity, seed)` assembles the configuration's quantized model from the GPTQ caches
(backend `packed` or `dequant`), attaches LoRA with per-unit ranks (checked), trains `fidelity`
steps and scores the validation split. The result — failures too (non-finite loss, out of memory),
with the reason — is a JSON *record* keyed by a hash of everything that determines it: the
configuration, fidelity, seed, the base-model, task and cache fingerprints, the LoRA and training
params, backend and dtype. A record that exists is returned without training; a lock file keeps two
workers from computing the same record at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from autoqra import fingerprint, models, quant, scoring
from autoqra.config import FinetuneParams, LoraParams
from autoqra.finetune import attach_lora, train
from autoqra.memory import MemoryModel
from autoqra.process import is_dead, parse, worker_id
from autoqra.space import Config, Space
from autoqra.tasks import encode, read_split

RECORD_VERSION = 1
LOCK_POLL_S = 2.0
LOCK_UNREADABLE_S = 60.0  # a lock without a worker id (killed between create and write) expires


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class Evaluator:
    """Runs and caches fidelity evaluations of configurations of one search space."""

    def __init__(self, *, model_dir: str | Path, task_dir: str | Path, caches: dict[int, quant.QuantCache],
                 space: Space, lora: LoraParams, finetune: FinetuneParams, records: str | Path,
                 metric: str = "answer_loss", backend: str = "auto", memory: MemoryModel | None = None,
                 device: str | None = None, progress: bool = False):
        self.model_dir, self.space, self.lora, self.ft = Path(model_dir), space, lora, finetune
        self.caches, self.memory, self.metric, self.progress = caches, memory, metric, progress
        self.records = Path(records)
        if device is None:
            self.device, self.dtype = models.device_and_dtype()
        else:
            self.device, self.dtype = device, torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.backend = ("packed" if self.device.startswith("cuda") else "dequant") if backend == "auto" else backend
        if self.backend == "packed" and self.dtype == torch.float32:
            self.dtype = torch.bfloat16  # GPTQModel's trainable layers compute in bf16/fp16
        missing = sorted(set(space.bits) - set(caches) - {quant.UNQUANTIZED})
        if missing:
            raise ValueError(f"quant.bits: no GPTQ cache for {missing} (run the quantize stage)")
        self.tokenizer = models.load_tokenizer(self.model_dir)
        self.train_data = [encode(self.tokenizer, ex, finetune.max_length) for ex in read_split(task_dir, "train")]
        val = read_split(task_dir, "val")
        self.val = val[: finetune.val_samples] if finetune.val_samples else val
        self._inputs = {"version": RECORD_VERSION, "model": fingerprint.of_dir(self.model_dir),
                        "task": fingerprint.of_dir(task_dir), "lora": {"alpha_ratio": lora.alpha_ratio,
                                                                        "dropout": lora.dropout},
                        "finetune": {k: v for k, v in asdict(finetune).items() if k != "steps"},
                        "metric": metric, "backend": self.backend, "dtype": str(self.dtype),
                        "targets": sorted(m for ms in space.members.values() for m in ms)}
        self.steps_trained = 0  # optimizer steps actually run by this evaluator (cached records add none)
        self.computed = 0

    # ------------------------------------------------------------------ keys and storage
    def key(self, config: Config, fidelity: int, seed: int, horizon: int = 0) -> str:
        used = sorted(set(config.bits) - {quant.UNQUANTIZED})
        caches = {b: self.caches[b].fingerprint for b in used}
        # a schedule that ends with the run (the default) adds nothing, so those keys never change
        extra = {"horizon": horizon} if horizon > fidelity else {}
        return fingerprint.of_data({**self._inputs, "config": config.key, "fidelity": fidelity, "seed": seed,
                                    "caches": caches, **extra})

    def path(self, key: str) -> Path:
        return self.records / key[:2] / f"{key}.json"

    def lookup(self, config: Config, fidelity: int, seed: int, horizon: int = 0) -> dict[str, Any] | None:
        path = self.path(self.key(config, fidelity, seed, horizon))
        return json.loads(path.read_text()) if path.exists() else None

    def _write(self, path: Path, record: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=1)
        os.replace(tmp, path)

    def _claim(self, path: Path) -> bool:
        """Take the lock of a record; False when another live worker holds it (wait for its record)."""
        lock = path.with_suffix(".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, worker_id().encode())
                os.close(fd)
                return True
            except FileExistsError:
                if path.exists():
                    return False
                with contextlib.suppress(FileNotFoundError):
                    if _stale(lock):
                        lock.unlink(missing_ok=True)  # its worker died: take over
                        continue
                time.sleep(LOCK_POLL_S)

    # ------------------------------------------------------------------ evaluation
    def __call__(self, config: Config, fidelity: int, seed: int, horizon: int = 0) -> dict[str, Any]:
        """The record of (config, fidelity, seed): read if it exists, computed otherwise. With a
        `horizon` above `fidelity` the learning-rate schedule spans `horizon` steps and the run is cut
        after `fidelity` of them (the first part of a longer run, rather than a whole short one)."""
        self.space.check(config)
        if horizon and horizon < fidelity:
            raise ValueError(f"horizon={horizon}: must be 0 or at least fidelity={fidelity}")
        key = self.key(config, fidelity, seed, horizon)
        path = self.path(key)
        if path.exists():
            return json.loads(path.read_text())
        if not self._claim(path):
            return json.loads(path.read_text())
        try:
            record = self._run(config, fidelity, seed, horizon)
            record["key"] = key
            self._write(path, record)
            self.computed += 1
            return record
        finally:
            path.with_suffix(".lock").unlink(missing_ok=True)

    def build(self, config: Config, workdir: Path) -> Any:
        """The configuration's quantized model with its adapters attached (checked)."""
        bits, ranks = self.space.per_module(config)
        if self.backend == "packed":
            model = quant.load_packed(quant.write_packed(bits, self.model_dir, self.caches, workdir / "packed"),
                                      self.device, self.dtype)
        else:
            model = quant.apply_dequant(models.load_model(self.model_dir, self.dtype, self.device), bits, self.caches)
        for p in model.parameters():
            p.requires_grad_(False)
        return attach_lora(model, ranks, self.lora.alpha_ratio, self.lora.dropout)

    def _run(self, config: Config, fidelity: int, seed: int, horizon: int = 0) -> dict[str, Any]:
        start = time.perf_counter()
        record: dict[str, Any] = {"config": config.to_dict(), "config_key": config.key, "fidelity": fidelity,
                                  "seed": seed, "horizon": max(horizon, fidelity), "backend": self.backend,
                                  "device": self.device, "dtype": str(self.dtype), "metric": self.metric,
                                  "status": "ok", "reason": None}
        if self.memory is not None:
            mem = self.memory.breakdown(self.space, config)
            record["memory"] = {k: mem[k] for k in ("total", "weights", "metadata", "lora", "avg_bits",
                                                    "avg_bits_with_lora")}
        try:
            with tempfile.TemporaryDirectory(dir=self.records.parent if self.records.parent.exists() else None) as tmp:
                torch.manual_seed(seed)
                model = self.build(config, Path(tmp))
                result = train(model, self.train_data, self.tokenizer.pad_token_id, fidelity, seed,
                               batch_size=self.ft.batch_size, lr=self.ft.lr, warmup_ratio=self.ft.warmup_ratio,
                               schedule=self.ft.schedule, weight_decay=self.ft.weight_decay,
                               max_grad_norm=self.ft.max_grad_norm,
                               gradient_checkpointing=self.ft.gradient_checkpointing, progress=self.progress,
                               on_step=self._count_step, horizon=horizon)
                record.update(train_steps=result.steps, train_s=round(result.seconds, 3), train_loss=result.losses)
                if result.failure:
                    return {**record, "status": "failed", "reason": result.failure, "score": None,
                            "wall_s": round(time.perf_counter() - start, 3)}
                record.update(self._score(model))
        except Exception as exc:  # out of memory is a result, not a crash
            if not _is_oom(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return {**record, "status": "failed", "reason": f"out of memory: {exc}"[:500], "score": None,
                    "wall_s": round(time.perf_counter() - start, 3)}
        if record["score"] is None or not torch.isfinite(torch.tensor(record["score"])):
            record.update(status="failed", reason=f"non-finite validation score ({record['score']})", score=None)
        record["wall_s"] = round(time.perf_counter() - start, 3)
        return record

    def _count_step(self) -> None:
        self.steps_trained += 1

    def _score(self, model: Any) -> dict[str, Any]:
        start = time.perf_counter()
        data = scoring.batches(self.tokenizer, self.val, self.ft.max_length, self.ft.eval_batch_size)
        out: dict[str, Any] = {"answer_loss": scoring.mean_nll(model, data)}
        if self.metric == "exact_match":
            out["exact_match"] = scoring.exact_match(model, self.tokenizer, self.val, self.ft.max_new_tokens,
                                                     self.ft.eval_batch_size)
            out["score"] = 1.0 - out["exact_match"]
        else:
            out["score"] = out["answer_loss"]
        out["eval_s"] = round(time.perf_counter() - start, 3)
        return out


def _stale(lock: Path) -> bool:
    """A record lock whose worker is dead, or which holds no worker id and is older than
    LOCK_UNREADABLE_S (raises FileNotFoundError when the lock went away meanwhile)."""
    holder = lock.read_text()
    if parse(holder) is None:
        return time.time() - lock.stat().st_mtime > LOCK_UNREADABLE_S
    return is_dead(holder)
