"""The fork server imports the main script once, so that its workers do not
each re-run it (CPython <= 3.13 ignores ``set_forkserver_preload(["__main__"])``,
gh-98552); see ``parloop.backends._preload``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import os, sys
    with open(sys.argv[1], "a") as log:  # every run of this module body leaves a line
        log.write(f"{os.getpid()} {__name__}\\n")
    from parloop import parallel_for

    def pid(_):
        return os.getpid()

    if __name__ == "__main__":
        fn = parallel_for(pid, backend="process", workers=2, start_method="forkserver",
                          chunksize=1)
        workers = set(fn([0] * 8))
        workers |= set(fn([0] * 8))
        print(" ".join(map(str, sorted(workers))))
""")


@pytest.mark.timeout(60)
def test_the_main_script_runs_once_in_the_fork_server_not_in_each_worker(tmp_path: Path) -> None:
    script, log = tmp_path / "main_script.py", tmp_path / "runs.log"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(log)], capture_output=True,
                         text=True, timeout=50, check=True).stdout
    workers = {int(p) for p in out.split()}
    runs = [line.split() for line in log.read_text().splitlines()]
    assert len(workers) >= 1
    by_pid = {int(pid): name for pid, name in runs}
    assert list(by_pid.values()).count("__main__") == 1  # the caller
    assert list(by_pid.values()).count("__mp_main__") == 1  # the fork server, once
    assert not workers & set(by_pid)  # no worker re-ran the script
