"""The output folder's driver lock (rsdpo/lock.py) on a real file system: refusal naming the holder,
automatic break of provably stale records, --break-lock, heartbeats, a lost lock noticed, and one
winner among processes racing for it."""

import json
import multiprocessing
import socket
import subprocess
import sys
import time

import pytest

from rsdpo.lock import LOCK_NAME, ObjectStore, OutputLock, OutputLocked, PosixStore


def _record(lock_dir):
    return json.loads((lock_dir / LOCK_NAME).read_text())


def test_second_holder_is_refused_with_the_holder_named(tmp_path):
    first = OutputLock.at(tmp_path).acquire()
    with pytest.raises(OutputLocked) as refused:
        OutputLock.at(tmp_path).acquire()
    message = str(refused.value)
    assert f"host {socket.gethostname()}, pid {first.me.pid}" in message
    assert "--break-lock" in message and "lease expires 120s" in message
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    OutputLock.at(tmp_path).acquire().release()  # free again


def test_record_of_an_exited_process_on_this_host_is_broken(tmp_path, capsys):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)
    lock = OutputLock.at(tmp_path)
    stale = {**json.loads(lock._record()), "token": "old", "pid": pid}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    lock.acquire()
    assert _record(tmp_path)["token"] == lock.me.token
    assert f"its process {pid} is not running on this host" in capsys.readouterr().err
    lock.release()


def test_record_whose_lease_ran_out_is_broken_and_a_live_one_only_with_break_lock(tmp_path):
    lock = OutputLock.at(tmp_path)
    other_host = {**json.loads(lock._record()), "token": "other", "host": "node-7", "pid": 4242}
    (tmp_path / LOCK_NAME).write_text(json.dumps(other_host | {"heartbeat_at": time.time() - 5}))
    with pytest.raises(OutputLocked, match="host node-7, pid 4242"):
        lock.acquire()
    (tmp_path / LOCK_NAME).write_text(json.dumps(other_host | {"heartbeat_at": time.time() - 121}))
    lock.acquire()
    lock.release()
    (tmp_path / LOCK_NAME).write_text(json.dumps(other_host | {"heartbeat_at": time.time()}))
    OutputLock.at(tmp_path).acquire(break_lock=True).release()


def _within(seconds, condition):
    deadline = time.monotonic() + seconds  # generous: the heartbeat thread shares a loaded machine
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_heartbeat_renews_the_record_and_a_taken_over_lock_is_noticed(tmp_path):
    lost = []
    lock = OutputLock.at(tmp_path, heartbeat_s=0.05, on_lost=lost.append).acquire()
    first_beat = _record(tmp_path)["heartbeat_at"]
    assert _within(10, lambda: _record(tmp_path)["heartbeat_at"] > first_beat) and not lost
    PosixStore(tmp_path / LOCK_NAME).replace(json.dumps({**_record(tmp_path), "token": "thief"}).encode())
    assert _within(10, lambda: lost) and "lost its lock" in lost[0]
    lock.release()
    assert _record(tmp_path)["token"] == "thief"  # release never deletes another driver's record


def test_an_unreadable_record_is_refused_not_overwritten(tmp_path):
    (tmp_path / LOCK_NAME).write_text("not json")
    with pytest.raises(OutputLocked, match="delete that file or re-run with --break-lock"):
        OutputLock.at(tmp_path).acquire()
    OutputLock.at(tmp_path).acquire(break_lock=True).release()


def _contend(folder, start, results):
    start.wait()
    try:
        OutputLock.at(folder).acquire()  # held until the process exits
        results.put("won")
        time.sleep(1.0)
    except OutputLocked:
        results.put("refused")


def test_exactly_one_of_racing_processes_takes_the_lock(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(tmp_path, start, results)) for _ in range(6)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # every process is waiting at the start line
    start.set()
    outcomes = sorted(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert outcomes == ["refused"] * 5 + ["won"]


def test_on_an_object_store_a_second_holder_is_refused_and_one_of_racing_drivers_wins(s3_bucket):
    """The same lock on the tests' real S3 server (rclone serve s3), which has no conditional PUT:
    check, write, wait, read back (rsdpo/lock.py ObjectStore)."""
    import threading

    from rsdpo import storage

    out = f"{s3_bucket}/run"
    # a run folder always holds other objects; an emptied prefix gets a folder-marker object from
    # pyarrow on delete, which rclone serve s3 stores as a file that blocks later writes under it
    storage.write_text(f"{out}/manifest.json", "{}")
    first = OutputLock.at(out).acquire()
    with pytest.raises(OutputLocked, match=f"pid {first.me.pid}, started "):
        OutputLock.at(out).acquire()
    first.release()
    assert not storage.exists(f"{out}/{LOCK_NAME}")

    outcomes, lock = [], threading.Lock()

    def contend():
        try:
            held = OutputLock.at(out).acquire()
        except OutputLocked:
            with lock:
                outcomes.append("refused")
            return
        with lock:
            outcomes.append("won")
        time.sleep(ObjectStore.SETTLE_S * 3)  # held while the others look
        held.release()

    racers = [threading.Thread(target=contend) for _ in range(4)]
    for t in racers:
        t.start()
    for t in racers:
        t.join(timeout=120)
    assert sorted(outcomes) == ["refused"] * 3 + ["won"]
