"""Worker liveness: a killed worker must never leave work blocked."""

import os
import socket
import subprocess
import sys

import pytest

from autoqra.store.process import is_dead, parse, worker_id


def _finished_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_this_process_is_alive_and_a_finished_one_is_dead():
    me = worker_id()
    assert parse(me)[:2] == (socket.gethostname(), os.getpid())
    assert not is_dead(me)
    host = socket.gethostname()
    assert is_dead(f"{host}:{_finished_pid()}:whatever")
    assert is_dead(f"{host}:{_finished_pid()}")  # ids without a start stamp still work


def test_a_reused_pid_does_not_keep_a_dead_worker_alive():
    host, pid, start = parse(worker_id())
    if not start:
        pytest.skip("no /proc (macOS): liveness is by pid only")
    assert is_dead(f"{host}:{pid}:{start}x")  # same pid, another incarnation
    assert not is_dead(f"{host}:{pid}:{start}")


def test_unknown_hosts_and_unparseable_ids_are_not_declared_dead():
    assert not is_dead(f"not-{socket.gethostname()}:{_finished_pid()}:x")
    for junk in ("", "vm 20484", "a:b:c", "a:1:2:3"):
        assert parse(junk) is None and not is_dead(junk)
