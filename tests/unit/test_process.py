"""Process hardening, in a child process so the test runner itself is untouched."""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = """
import json, resource
from sidkeyd.process import harden_process, is_dumpable
before = is_dumpable()
result = harden_process(lock_memory=False)
print(json.dumps([before, is_dumpable(), resource.getrlimit(resource.RLIMIT_CORE),
                  result.dumpable, result.memory_locked]))
"""


def test_harden_process_disables_core_dumps_and_dumpability() -> None:
    """RLIMIT_CORE becomes 0 and PR_GET_DUMPABLE 0; nothing is locked unless asked."""
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    assert [True, False, [0, 0], False, False] == json.loads(out.stdout)
