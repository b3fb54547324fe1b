"""The static types of every form: ``tests/typing`` must pass mypy (and
pyright, when installed), with every ``# type: ignore[code]`` really needed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ROOT / "tests" / "typing"


def _check(command: list[str], timeout: float) -> None:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}"


@pytest.mark.timeout(300)
def test_mypy_strict_accepts_every_form_and_rejects_every_misuse() -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[test]')")
    # --warn-unused-ignores turns each `# type: ignore[code]` into an assertion
    # that the line is rejected, and for that reason.
    _check([sys.executable, "-m", "mypy", "--strict", "--warn-unused-ignores",
            "--no-incremental", str(CHECKS.relative_to(ROOT))], timeout=280)


@pytest.mark.timeout(300)
def test_pyright_strict_agrees() -> None:
    if importlib.util.find_spec("pyright") is None:
        pytest.skip("pyright is not installed (pip install pyright)")
    # reportUnnecessaryTypeIgnoreComment in the config plays --warn-unused-ignores.
    _check([sys.executable, "-m", "pyright", "-p", str(CHECKS / "pyrightconfig.json"),
            "--pythonpath", sys.executable], timeout=280)
