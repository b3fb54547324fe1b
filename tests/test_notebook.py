"""A real Jupyter kernel, executing cells through nbclient as a notebook
would: functions defined in cells, a lambda, top-level ``await``, a cell run
again with a new body, a kernel interrupt during a long call, a progress
bar, and nothing left running once the kernel shuts down."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from procs import descendants, wait_gone

# jupyter_client's own deprecation (datetime.utcnow on 3.12+), not ours
pytestmark = pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


class Notebook:
    """Cells run one at a time in one kernel; each returns its outputs."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.nb = client.nb
        self.count = 0

    def run(self, source: str, allow_error: bool = False) -> list[dict[str, Any]]:
        cell = nbformat.v4.new_code_cell(source)
        if allow_error:
            cell.metadata["tags"] = ["raises-exception"]
        self.nb.cells.append(cell)
        self.client.execute_cell(cell, len(self.nb.cells) - 1)
        return list(cell.outputs)

    def text(self, source: str) -> str:
        """What a cell printed on stdout (a failing cell fails the test, with its traceback)."""
        outputs = self.run(source)
        return "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")


@pytest.fixture
def notebook() -> Any:
    nb = nbformat.v4.new_notebook()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLOOP_")}
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120, startup_timeout=60)
    with client.setup_kernel(env=env):
        book = Notebook(client)
        kernel = int(book.text("import os; print(os.getpid())"))
        yield book
        everyone = descendants(kernel) | {kernel}
    # The kernel has shut down: nothing it started may outlive it.
    assert not wait_gone(everyone, 20), "processes outlived the kernel"


@pytest.mark.no_census  # the kernel is a child of ours; the fixture checks what it leaves
@pytest.mark.timeout(240)
def test_cell_functions_lambdas_await_and_a_cell_run_again(notebook: Notebook) -> None:
    notebook.text("from parloop import parallel_for\nimport time")
    out = notebook.text(
        '@parallel_for(backend="process", workers=2)\n'
        "def f(x):\n"
        "    return x * x\n"
        "print(f(range(8)), f.last_plan.backend)")
    assert out.strip() == "[0, 1, 4, 9, 16, 25, 36, 49] process"
    # The same name, a new body: the workers must run the new one.
    out = notebook.text(
        '@parallel_for(backend="process", workers=2)\n'
        "def f(x):\n"
        "    return -x\n"
        "print(f(range(4)))")
    assert out.strip() == "[0, -1, -2, -3]"
    out = notebook.text('print(parallel_for(lambda x: x + 1, backend="process", workers=2)(range(3)))')
    assert out.strip() == "[1, 2, 3]"
    assert notebook.text("print(await f.amap(range(3)))").strip() == "[0, -1, -2]"
    # A global the function reads, changed between calls, is seen as it is now.
    out = notebook.text(
        "scale = 10\n"
        '@parallel_for(backend="process", workers=2)\n'
        "def g(x):\n"
        "    return x * scale\n"
        "first = g(range(3))\n"
        "scale = 100\n"
        "print(first, g(range(3)))")
    assert out.strip() == "[0, 10, 20] [0, 100, 200]"
    # The plain decorator: whatever it chooses, the results are right.
    out = notebook.text(
        "@parallel_for\n"
        "def h(x):\n"
        "    time.sleep(0.02)\n"
        "    return x * 3\n"
        "print(h(range(40)) == [x * 3 for x in range(40)])")
    assert out.strip() == "True"


@pytest.mark.no_census
@pytest.mark.timeout(240)
def test_cells_with_numpy(notebook: Notebook) -> None:
    pytest.importorskip("numpy")
    out = notebook.text(
        "import numpy as np\n"
        "from parloop import parallel_for\n"
        '@parallel_for(backend="process", workers=2)\n'
        "def norm(n):\n"
        "    return float(np.linalg.norm(np.ones(n)))\n"
        "print([round(v, 3) for v in norm([1, 4, 9])], norm.last_plan.backend)")
    assert out.strip() == "[1.0, 2.0, 3.0] process"
    out = notebook.text(
        "@parallel_for\n"
        "def total(n):\n"
        "    return int(np.arange(n).sum())\n"
        "print(total(range(200)) == [n * (n - 1) // 2 for n in range(200)])")
    assert out.strip() == "True"


@pytest.mark.no_census
@pytest.mark.timeout(240)
def test_a_kernel_interrupt_stops_a_long_call(notebook: Notebook) -> None:
    notebook.text("from parloop import parallel_for\nimport os, time\n"
                  'slow = parallel_for(time.sleep, backend="process", workers=2)\n'
                  'pids = parallel_for(lambda _: os.getpid(), backend="process", workers=2)')
    workers = json.loads(notebook.text("import json; print(json.dumps(sorted(set(pids(range(8))))))"))
    client = notebook.client
    client.timeout, client.interrupt_on_timeout = 4, True
    client.error_on_timeout = {"ename": "Timeout", "evalue": "interrupted", "traceback": []}
    began = time.monotonic()
    outputs = notebook.run("slow([60] * 8)", allow_error=True)
    client.timeout, client.interrupt_on_timeout = 120, False
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert [e["ename"] for e in errors] == ["KeyboardInterrupt"], outputs
    # The kernel is usable at once, and the interrupted call's workers are gone.
    assert notebook.text("print(sum(parallel_for(abs, backend='process', workers=2)(range(-5, 5))))"
                         ).strip() == "25"
    assert time.monotonic() - began < 60
    assert not wait_gone(set(workers), 10), "the interrupted call's workers live on"


@pytest.mark.no_census
@pytest.mark.timeout(240)
def test_progress_is_a_live_bar_in_a_notebook(notebook: Notebook) -> None:
    pytest.importorskip("tqdm")
    pytest.importorskip("ipywidgets")
    outputs = notebook.run(
        "from parloop import parallel_for\n"
        "import time\n"
        "def step(x):\n"
        "    time.sleep(0.01)\n"
        "    return x\n"
        "print(len(parallel_for(step, progress=True, workers=2)(range(50))))")
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, f"no widget among {outputs}"
    assert any(o.get("text", "").strip() == "50" for o in outputs)


@pytest.mark.no_census
@pytest.mark.timeout(240)
def test_setup_submit_and_a_checkpoint_with_cell_functions(notebook: Notebook,
                                                          tmp_path: Any) -> None:
    db = str(tmp_path / "cells.db")
    notebook.run(f"""
import os
from concurrent.futures import as_completed
from parloop import parallel_for, worker_id

def load():
    return {{"pid": os.getpid(), "offset": 100}}

def shifted(state, x):
    assert state["pid"] == os.getpid()
    return state["offset"] + x, worker_id()

calls = parallel_for(shifted, setup=load, backend="process", workers=2, checkpoint={db!r})
""")
    first = json.loads(notebook.text("import json; print(json.dumps(calls(range(6))))"))
    assert [value for value, _ in first] == [100 + x for x in range(6)]
    assert {ident for _, ident in first} <= {0, 1}
    again = notebook.text("calls(range(8)); print(calls.last_plan.restored, "
                          "calls.last_plan.items)")
    assert again.split() == ["6", "2"]
    # The cell run again with a new body: its stored results no longer apply.
    notebook.run(f"""
def shifted(state, x):
    return state["offset"] - x, worker_id()

calls = parallel_for(shifted, setup=load, backend="process", workers=2, checkpoint={db!r})
""")
    assert notebook.text("print(calls(range(3)), calls.last_plan.restored)").split(
        "]")[-1].strip() == "0"
    submitted = notebook.text("""
with parallel_for(workers=2, backend="process") as pool:
    futures = [pool.submit(lambda x: x * 3, x) for x in range(4)]
    print(sorted(f.result() for f in as_completed(futures)))
""")
    assert submitted.strip() == "[0, 3, 6, 9]"
    # A teardown defined in a cell: each worker's state ends, and the cell sees what it gave.
    ended = notebook.text("""
def close(state):
    return worker_id(), state["pid"] == os.getpid()

closing = parallel_for(shifted, setup=load, teardown=close, backend="process", workers=2,
                       chunksize=1)
closing(range(6))
print(sorted(closing.last_plan.teardown_results))
""")
    assert ended.strip() in ("[(0, True), (1, True)]", "[(0, True)]", "[(1, True)]")
