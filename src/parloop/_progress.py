"""``progress=``: an item-accurate bar, a plain counter, or your callback.

* ``progress=True`` on a terminal, with tqdm installed (``pip install
  'parloop[progress]'``): a tqdm bar counted in items, never in chunks, with
  the total when known; without tqdm, one self-overwriting stderr line.
* ``progress=True`` in a Jupyter kernel: tqdm's widget bar when ipywidgets
  is installed too, else tqdm's text bar (the notebook redraws it in place),
  else the self-overwriting line.
* ``progress=True`` when stderr is a file or a CI log: a single summary line
  at the end, so logs never fill with carriage-return spam.
* ``progress=callable``: ``callable(done, total)`` after every batch of
  results (``total`` is None for an input of unknown length).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Progress", "make_progress"]

REFRESH_SECONDS = 0.1


class Progress:
    """Counts finished items; subclasses show them."""

    def __init__(self, total: int | None, label: str) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.restored = 0  # of ``done``: read back from a checkpoint, not run
        self.started = time.monotonic()

    def update(self, count: int) -> None:
        self.done += count

    def restore(self, count: int) -> None:
        """``count`` results came from a checkpoint."""
        self.restored += count
        self.update(count)

    def close(self) -> None:
        pass


class _Callback(Progress):
    def __init__(self, total: int | None, label: str,
                 callback: Callable[[int, int | None], None]) -> None:
        super().__init__(total, label)
        self.callback = callback

    def update(self, count: int) -> None:
        self.done += count
        self.callback(self.done, self.total)


class _Tqdm(Progress):
    def __init__(self, total: int | None, label: str, tqdm: Any) -> None:
        super().__init__(total, label)
        # No monitor thread: a thread in the caller would make the next
        # process pool avoid fork.
        tqdm.monitor_interval = 0
        self.bar = tqdm(total=total, desc=label, unit="item", dynamic_ncols=True)

    def update(self, count: int) -> None:
        self.done += count
        self.bar.update(count)

    def restore(self, count: int) -> None:
        self.restored += count
        self.bar.set_postfix_str(f"{self.restored} from checkpoint", refresh=False)
        self.update(count)

    def close(self) -> None:
        self.bar.close()


class _Counter(Progress):
    """A dependency-free stderr counter that behaves in logs."""

    def __init__(self, total: int | None, label: str, interactive: bool) -> None:
        super().__init__(total, label)
        self.interactive = interactive
        self.shown = 0.0

    def _line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            count = f"{self.done}/{self.total} items ({100 * self.done / self.total:.0f}%)"
        else:
            count = f"{self.done} items"
        if self.restored:
            count += f", {self.restored} from checkpoint"
        return f"{self.label}: {count} in {elapsed:.1f} s, {rate:.1f} items/s"

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.interactive and now - self.shown >= REFRESH_SECONDS:
            self.shown = now
            sys.stderr.write("\r" + self._line())
            sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write(("\r" if self.interactive else "") + self._line() + "\n")
        sys.stderr.flush()


def in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel (which shows output live,
    though stderr is no terminal there)."""
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return getattr(shell, "kernel", None) is not None


def make_progress(option: bool | Callable[[int, int | None], None], total: int | None,
                  label: str) -> Progress | None:
    """The reporter ``progress=option`` asks for, or None."""
    if option is False:
        return None
    if callable(option) and not isinstance(option, bool):
        return _Callback(total, label, option)
    notebook = in_notebook()
    if not notebook and not sys.stderr.isatty():
        return _Counter(total, label, interactive=False)  # a log: one summary line, no redraws
    try:
        if notebook and importlib.util.find_spec("ipywidgets") is not None:
            from tqdm.notebook import tqdm
        else:
            from tqdm import tqdm
    except ImportError:
        return _Counter(total, label, interactive=True)
    return _Tqdm(total, label, tqdm)
