"""The BLAS thread limit of the ``live-stack`` entry point (live_stack.blas).

The limit is process-wide, so each case runs in a child process and reads the threads
the BLAS library reports afterwards (threadpoolctl's own view of it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from live_stack.blas import ENV_SETTINGS

CHILD = """
import json
from threadpoolctl import threadpool_info
from live_stack.blas import limit_blas_threads
before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
applied = limit_blas_threads()
after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
print(json.dumps({"applied": applied, "before": before, "after": after}))
"""


def _run(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ENV_SETTINGS}
    env.update(extra)
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    return json.loads(proc.stdout)


def test_one_blas_thread_after_the_limit() -> None:
    r = _run()
    assert r["applied"] is True
    assert r["after"] and all(n == 1 for n in r["after"])


def test_the_users_own_setting_stands() -> None:
    r = _run(OPENBLAS_NUM_THREADS="2")
    assert r["applied"] is False
    assert r["after"] == r["before"]
