"""Work on the GPU that may take its process down, run in worker processes that are replaced.

A kernel's fault leaves the process's CUDA context broken (every later CUDA call fails with it),
and a persistent kernel whose barrier never opens never returns. So the path sweep
(path_table.py) and the paths' diagnosis (diagnose_paths.py) run their items in a worker process
that keeps its progress in a state file (JSON) and, before each piece of work, says what it is
on (announce); where a worker fails (an exception, a crash, no progress for stall_s seconds:
killed), the caller records that against what it was on, and a fresh worker goes on from the
state.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A worker that has not announced new work for this long is taken as hung and killed.
STALL_S = 15


def write_json(path, value):
    """path's new contents, whole or not at all (a reader never sees half a file)."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(value, indent=1))
    os.replace(part, path)


def announce(state_path, **where):
    """What a worker is about to run (read back by run_in_workers where the worker fails)."""
    write_json(state_path.with_suffix(".running"), where)


def _run_worker(command, state_path, stall_s, progress):
    """Runs a worker until it ends or announces nothing for stall_s seconds (then kills it),
    calling progress() as it waits. Returns (exit status, or None where it hung; its standard
    error)."""
    running = state_path.with_suffix(".running")
    running.unlink(missing_ok=True)
    errors = state_path.with_suffix(".stderr")
    with open(errors, "w") as stderr:
        # (The worker imports what this process imports: fused_rnn may be on its path only, as
        # in a build in place under pytest.)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(os.path.abspath(p or os.curdir)
                                                          for p in sys.path))
        worker = subprocess.Popen([*command, str(state_path)], stderr=stderr, env=env)
        started = time.time()
        try:
            while worker.poll() is None:
                time.sleep(0.2)
                progress()
                last = max(started, running.stat().st_mtime) if running.exists() else started
                if time.time() - last > stall_s:
                    worker.kill()
                    worker.wait()
                    return None, errors.read_text()
        finally:
            if worker.poll() is None:  # (the caller itself stopped)
                worker.kill()
                worker.wait()
    return worker.returncode, errors.read_text()


def run_in_workers(command, state, record_failure, progress=lambda state: None,
                   stall_s=STALL_S):
    """Runs `command` + [state file] as worker processes, one after another, until one ends
    well, one fails before announcing any work, or state["deadline"] (time.time(); None: none)
    has passed. After a failure, record_failure(state, announced, how) updates the state with
    what the worker last announced (a dict) and how it failed (its last line of standard error,
    or "hung ...", or its exit status), for the next worker to go on from. progress(state)
    after each change of the state. Returns the last state. Stopped by SIGTERM, it stops its
    worker first."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        with tempfile.TemporaryDirectory() as folder:
            state_path = Path(folder) / "state.json"
            write_json(state_path, state)
            seen = [state_path.stat().st_mtime_ns]

            def poll():
                if state_path.stat().st_mtime_ns != seen[0]:
                    seen[0] = state_path.stat().st_mtime_ns
                    progress(json.loads(state_path.read_text()))
            while True:
                status, errors = _run_worker(command, state_path, stall_s, poll)
                sys.stderr.write(errors)
                state = json.loads(state_path.read_text())
                running = state_path.with_suffix(".running")
                if status == 0 or not running.exists():
                    progress(state)
                    if status != 0:
                        print(f"a worker failed before announcing any work (exit status "
                              f"{status})", file=sys.stderr)
                    return state
                lines = [line for line in errors.splitlines() if line.strip()]
                how = (f"hung (no progress for {stall_s} s)" if status is None else
                       lines[-1] if lines else f"exit status {status}")
                record_failure(state, json.loads(running.read_text()), how)
                write_json(state_path, state)
                progress(state)
                if state["deadline"] is not None and time.time() >= state["deadline"]:
                    return state
    finally:
        signal.signal(signal.SIGTERM, previous)
