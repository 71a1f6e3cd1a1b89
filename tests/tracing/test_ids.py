"""New trace and span IDs: valid, never handed out twice, never shared with a forked child."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import flask_gateway_obs
from flask_gateway_obs.tracing import ids

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(flask_gateway_obs.__file__)))

_TRACE = re.compile(r"[0-9a-f]{32}").fullmatch
_SPAN = re.compile(r"[0-9a-f]{16}").fullmatch


def test_ids_are_lowercase_hex_and_unique() -> None:
    """Over several batches every pair is 32 + 16 lowercase hex digits, none repeated,
    none all zeros."""
    pairs = [ids.new_ids() for _ in range(5 * ids.BATCH)]
    assert all(_TRACE(t) and _SPAN(s) for t, s in pairs)
    assert len({t for t, _ in pairs}) == len(pairs)
    assert len({s for _, s in pairs}) == len(pairs)
    assert ("0" * 32) not in {t for t, _ in pairs} and ("0" * 16) not in {s for _, s in pairs}


_FORK_SCRIPT = """
import json, os, sys
from flask_gateway_obs.tracing import ids
ids.new_ids()  # the parent has pairs in hand
parents = set(ids.POOL)
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(write, json.dumps(ids.new_ids()).encode())
    os._exit(0)
os.waitpid(pid, 0)
drawn = tuple(json.loads(os.read(read, 1000)))
print(json.dumps({"shared": drawn in parents, "left": len(parents)}))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_draws_its_own_ids() -> None:
    """A child forked after the parent drew IDs never gets one of the parent's (checked
    in a fresh single-threaded interpreter)."""
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT}
    done = subprocess.run(
        [sys.executable, "-c", _FORK_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"shared": False, "left": ids.BATCH - 1}
