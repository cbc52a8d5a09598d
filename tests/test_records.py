"""The record store: computed once across workers, never trusted when damaged, no wait on the dead."""

from __future__ import annotations

import json
import random
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


def test_stores_of_one_folder_read_each_other_share_locks_and_write_only_their_own(tmp_path):
    shared = tmp_path / "records"
    evolve, finetune = RecordStore(shared / "evolve", shared=shared), RecordStore(shared / "finetune/a", shared=shared)
    body = {"status": "ok", "score": 1.0, "reason": None}
    first, computed = evolve.get(KEY, lambda: body)
    assert computed and (shared / "evolve/STORE").exists() and evolve.path(KEY).exists()
    again, computed = finetune.get(KEY, lambda: pytest.fail("recomputed a record another store holds"))
    assert not computed and again == first and not finetune.path(KEY).exists()
    # a store is its stage's declared output: it exists even when every record came from elsewhere
    assert (shared / "finetune/a/STORE").exists()
    assert finetune.locks == evolve.locks == shared / "locks"
    # contending stores compute a key once between them
    other = "cd" + "1" * 62
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return body

    threads = [threading.Thread(target=s.get, args=(other, slow)) for s in (evolve, finetune, evolve, finetune)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    # another store's damaged record is skipped, not moved: it is not this store's to change
    damaged = "ef" + "2" * 62
    evolve.path(damaged).parent.mkdir(parents=True, exist_ok=True)
    evolve.path(damaged).write_text("{ truncated")
    assert finetune.read(damaged) is None and evolve.path(damaged).exists()
    record, computed = finetune.get(damaged, lambda: body)
    assert computed and finetune.path(damaged).exists() and evolve.path(damaged).read_text() == "{ truncated"
    # records written before stores were per stage (directly under the folder) are read too
    legacy = RecordStore(shared)
    legacy.write("aa" + "3" * 62, body)
    assert finetune.read("aa" + "3" * 62)["score"] == 1.0


def test_a_stores_own_failure_does_not_shadow_another_stores_success(tmp_path):
    shared = tmp_path / "records"
    mine, theirs = RecordStore(shared / "finetune/a", shared=shared), RecordStore(shared / "evolve", shared=shared)
    mine.write(KEY, {"status": "failed", "score": None, "reason": "out of memory", "transient": True, "attempts": 3})
    assert mine.read(KEY)["status"] == "failed"  # alone, the failure is what there is
    theirs.write(KEY, {"status": "ok", "score": 1.5, "reason": None})
    assert mine.read(KEY)["score"] == 1.5
