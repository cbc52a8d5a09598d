"""The record store: computed once across workers, never trusted when damaged, no wait on the dead."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from autoqra.store.records import FORMAT, RecordError, RecordStore, validate

KEY = "ab" + "0" * 62


def _contend(store_root, workers=4):
    """`workers` threads ask one store for one record; returns (computations, peak overlap, results)."""
    active, peak, computed, results = [0], [0], [], []
    guard = threading.Lock()

    def compute():
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(random.uniform(0, 0.05))
        with guard:
            active[0] -= 1
            computed.append(1)
        return {"status": "ok", "score": 1.0, "reason": None}

    def work():
        time.sleep(random.uniform(0, 0.03))
        results.append(RecordStore(store_root).get(KEY, compute)[0])

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return len(computed), peak[0], results


def test_contending_workers_compute_a_record_once_and_never_at_the_same_time(tmp_path):
    for round_ in range(20):
        computed, peak, results = _contend(tmp_path / f"r{round_}")
        assert computed == 1 and peak == 1 and len(results) == 4
        assert all(r == results[0] for r in results)
        assert not list((tmp_path / f"r{round_}" / "locks").glob("*"))


def test_a_lock_held_by_a_killed_worker_is_free_at_once(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from autoqra.store.records import RecordStore
        with RecordStore({str(tmp_path)!r}).lock({KEY!r}):
            print("held", flush=True)
            time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    store = RecordStore(tmp_path)
    blocked = threading.Event()

    def try_lock():
        with store.lock(KEY, ready=lambda: blocked.is_set()) as held:
            assert not held  # still held by the live worker
    blocked.set()
    try_lock()
    holder.send_signal(signal.SIGKILL)  # killed mid-evaluation: it writes nothing, releases nothing
    holder.wait()
    start = time.monotonic()
    record, computed = store.get(KEY, lambda: {"status": "ok", "score": 2.0, "reason": None})
    assert computed and record["score"] == 2.0 and time.monotonic() - start < 5


@pytest.mark.parametrize("bad, why", [
    ([], "not a JSON object"), ({"status": "ok"}, "missing field"),
    ({"format": 1, "key": KEY, "status": "ok", "score": 1.0, "reason": None}, "unknown format"),
    ({"format": FORMAT, "key": "cd" + "0" * 62, "status": "ok", "score": 1.0, "reason": None}, "holds key"),
    ({"format": FORMAT, "key": KEY, "status": "maybe", "score": 1.0, "reason": None}, "unknown status"),
    ({"format": FORMAT, "key": KEY, "status": "ok", "score": float("nan"), "reason": None}, "score"),
])
def test_validation_names_what_is_wrong(bad, why):
    with pytest.raises(RecordError, match=why):
        validate(bad, KEY)


def test_records_are_written_whole_and_read_back(tmp_path):
    store = RecordStore(tmp_path)
    written = store.write(KEY, {"status": "failed", "score": None, "reason": "non-finite training loss"})
    assert store.read(KEY) == written and written["format"] == FORMAT and written["key"] == KEY
    assert json.loads(store.path(KEY).read_text()) == written
    assert not list(store.path(KEY).parent.glob("*.tmp"))
    assert store.keys() == [KEY]


def test_the_cache_reads_legacy_per_stage_stores_and_changes_none_of_their_files(tmp_path):
    """Projects of the earlier layout kept a store per stage under data/search/records/<stage>: the cache
    reads them (a record there is not computed again) and writes only to itself."""
    legacy = tmp_path / "search/records"
    old = legacy / "evolve"
    old.mkdir(parents=True)
    (old / "STORE").write_text("record store\n")
    body = {"status": "ok", "score": 1.0, "reason": None}
    RecordStore(old).write(KEY, body)
    cache = RecordStore(tmp_path / "records", legacy=legacy)
    again, computed = cache.get(KEY, lambda: pytest.fail("recomputed a record a legacy store holds"))
    assert not computed and again["score"] == 1.0 and not cache.path(KEY).exists()
    assert cache.locks == tmp_path / "records/locks"
    # concurrent getters compute a key once
    other = "cd" + "1" * 62
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return body

    threads = [threading.Thread(target=RecordStore(tmp_path / "records", legacy=legacy).get, args=(other, slow))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    # a legacy store's damaged record is skipped, not moved: it is not the cache's to change
    damaged = "ef" + "2" * 62
    RecordStore(old).path(damaged).parent.mkdir(parents=True, exist_ok=True)
    RecordStore(old).path(damaged).write_text("{ truncated")
    assert cache.read(damaged) is None and RecordStore(old).path(damaged).exists()
    record, computed = cache.get(damaged, lambda: body)
    assert computed and cache.path(damaged).exists() and RecordStore(old).path(damaged).read_text() == "{ truncated"
    # records of the layout before per-stage stores (directly under the legacy folder) are read too
    RecordStore(legacy).write("aa" + "3" * 62, body)
    assert cache.read("aa" + "3" * 62)["score"] == 1.0


def test_a_failure_in_the_cache_does_not_shadow_a_legacy_stores_success(tmp_path):
    legacy = tmp_path / "legacy"
    cache = RecordStore(tmp_path / "records", legacy=legacy)
    cache.write(KEY, {"status": "failed", "score": None, "reason": "out of memory", "transient": True, "attempts": 3})
    assert cache.read(KEY)["status"] == "failed"  # alone, the failure is what there is
    RecordStore(legacy).write(KEY, {"status": "ok", "score": 1.5, "reason": None})
    assert cache.read(KEY)["score"] == 1.5


def test_a_damaged_record_is_moved_aside_only_if_still_damaged_under_its_lock(tmp_path):
    store = RecordStore(tmp_path)
    store.path(KEY).parent.mkdir(parents=True)
    store.path(KEY).write_text("{ cut")
    good = {"status": "ok", "score": 2.0, "reason": None}

    def repair_while_waiting():  # another worker holds the key's lock and writes a good record
        with RecordStore(tmp_path).lock(KEY):
            time.sleep(0.3)
            RecordStore(tmp_path).write(KEY, good)

    t = threading.Thread(target=repair_while_waiting)
    t.start()
    time.sleep(0.1)
    assert store.read(KEY)["score"] == 2.0  # waited for the lock, looked again: nothing to move aside
    t.join()
    assert not list(store.path(KEY).parent.glob("*.damaged-*")) and store.damaged == 0


def test_manifests_carry_the_records_adapters_and_study_and_rebuild_the_cache(tmp_path):
    from autoqra.store import manifest

    cache = RecordStore(tmp_path / "data/records")
    keys = {f"{i:02d}" + "4" * 62 for i in range(3)}
    for k in keys:
        cache.write(k, {"status": "ok", "score": 1.0, "reason": None, "train_steps": 4})
    out = tmp_path / "data/search/evolve"
    out.mkdir(parents=True)
    (out / "seed0.safetensors").write_bytes(b"adapter")
    journal = manifest.journal_path(cache.root, "evolve")
    journal.parent.mkdir(parents=True)
    journal.write_text("line 1\nline 2\n")
    held = manifest.write(out, cache, keys | {"ff" + "0" * 62}, {sorted(keys)[0]: "seed0.safetensors"},
                          journal=("evolve", journal))
    assert held == {"records": 3, "adapters": 1}  # a key the cache lacks is not invented
    # a clone: the outputs, no cache
    clone = tmp_path / "clone"
    (clone / "data/search").mkdir(parents=True)
    shutil.copytree(out, clone / "data/search/evolve")
    fresh = RecordStore(clone / "data/records")
    counts = manifest.rehydrate(fresh, clone / "data")
    assert counts == {"manifests": 1, "records": 3, "adapters": 1, "journals": 1, "damaged": 0, "skipped": 0}
    assert {k for k in keys if fresh.read(k)} == keys
    adapter = fresh.root / f"adapters/{sorted(keys)[0]}.safetensors"
    assert adapter.read_bytes() == b"adapter"
    assert manifest.journal_path(fresh.root, "evolve").read_text() == "line 1\nline 2\n"
    assert manifest.rehydrate(fresh, clone / "data")["records"] == 0  # nothing twice

    # a live journal is never replaced (a worker may be appending to it), even by a longer snapshot;
    # an adapter a kill cut short is copied again; a record written meanwhile is kept; a malformed
    # manifest is skipped with the rest still read
    manifest.journal_path(fresh.root, "evolve").write_text("line 1\n")
    adapter.write_bytes(b"ada")
    newer = sorted(keys)[1]
    fresh.path(newer).unlink()
    fresh.write(newer, {"status": "ok", "score": 0.5, "reason": None, "train_steps": 4})
    assert not fresh.write_new(newer, {"status": "ok", "score": 1.0, "reason": None, "train_steps": 4})
    (clone / "data/other").mkdir()
    (clone / "data/other/records.json").write_text('["not", "a", "manifest"]')
    counts = manifest.rehydrate(fresh, clone / "data")
    assert counts["skipped"] == 1 and counts["manifests"] == 1 and counts["adapters"] == 1
    assert counts["journals"] == 0 and manifest.journal_path(fresh.root, "evolve").read_text() == "line 1\n"
    assert adapter.read_bytes() == b"adapter" and fresh.read(newer)["score"] == 0.5
