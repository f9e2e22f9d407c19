"""Stopping a run's processes: also those whose mark cannot be read, found through their process group.

Ray's agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) write their
new name over their environment, so the run's mark is gone from
``/proc/<pid>/environ``; they live in the process group of the simulation
process, which the SuperLink starts in a session of its own. Here a started
process P starts Q in a session of its own (marked, as it inherits the
environment) and Q starts R in Q's group with an empty environment (no mark):
stopping the group must leave neither.
"""

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from scripts.flower_run import RUN_MARK, ProcessGroup, group_members, marked_processes, process_group

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

GRANDCHILD = "import time; time.sleep(300)"
CHILD = textwrap.dedent(f"""
    import subprocess, sys, time
    r = subprocess.Popen([sys.executable, "-c", {GRANDCHILD!r}], env={{}})
    print(r.pid, flush=True)
    time.sleep(300)
""")
PARENT = textwrap.dedent(f"""
    import subprocess, sys, time
    q = subprocess.Popen([sys.executable, "-c", {CHILD!r}], start_new_session=True, stdout=sys.stdout)
    print(q.pid, flush=True)
    time.sleep(300)
""")


def alive(pid: int) -> bool:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split() if Path(f"/proc/{pid}").exists() else []
    return bool(fields) and fields[0] != "Z"


def test_stop_also_kills_unmarked_members_of_a_marked_processs_group(tmp_path):
    group = ProcessGroup(tmp_path, dict(os.environ))
    parent = group.start("parent", [sys.executable, "-c", PARENT])
    log = tmp_path / "parent.log"
    deadline = time.monotonic() + 60
    while len(log.read_text().split()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    q, r = map(int, log.read_text().split()[:2])
    try:
        assert process_group(q) == q != process_group(parent.pid) and process_group(r) == q
        assert q in marked_processes(RUN_MARK, group.mark) and r not in marked_processes(RUN_MARK, group.mark)
        assert r in group_members({q})
        group.stop(grace=2.0)
        assert not alive(parent.pid) and not alive(q) and not alive(r)
    finally:
        for pid in (q, r):
            if alive(pid):
                os.kill(pid, 9)
