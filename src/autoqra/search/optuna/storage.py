"""Where a search's study lives: a journal file (one machine, several processes), an RDB URL (a cluster)."""

from __future__ import annotations

import os
from typing import Any

import optuna
from optuna.samplers import BaseSampler

from autoqra.search.optuna.driver import SearchFailed


def open_study(name: str, storage: str | None, journal: str | None, sampler: BaseSampler,
               readonly: bool = False) -> optuna.Study:
    """Create or load a study (direction: minimise). `storage` is an Optuna URL; without one a
    journal file is used (several processes on one machine may share it). `readonly` loads an
    existing study without writing to its storage (creating, even an existing study, appends to a
    journal: another stage's journal, a DVC output of that stage, must not change when read)."""
    from autoqra.params.sources import storage_url

    storage = storage_url(storage)
    if storage is None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        if journal is None:
            storage_obj: Any = optuna.storages.InMemoryStorage()
        else:
            # absolute: Optuna's lock is a symlink to this path, and a relative target dangles,
            # which makes a stale lock left by a killed worker spin forever instead of expiring
            journal = os.path.abspath(journal)
            os.makedirs(os.path.dirname(journal), exist_ok=True)
            storage_obj = JournalStorage(JournalFileBackend(journal))
    elif storage.startswith(("sqlite", "postgresql", "mysql")):
        storage_obj = optuna.storages.RDBStorage(storage, heartbeat_interval=60, grace_period=180)
    else:
        storage_obj = optuna.storages.get_storage(storage)
    if hasattr(sampler, "bind"):
        sampler.bind(storage_obj)
    if readonly:
        try:
            return optuna.load_study(study_name=name, storage=storage_obj, sampler=sampler)
        except KeyError:
            raise SearchFailed(f"study {name} not found in {journal or storage} (run the stage that "
                               "creates it first)") from None
    return optuna.create_study(study_name=name, storage=storage_obj, sampler=sampler, direction="minimize",
                               load_if_exists=True)
