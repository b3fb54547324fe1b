"""``python -m parloop``: what parloop sees on this machine, and the benchmarks.

* ``python -m parloop info``: usable CPUs and the limit behind the count, the
  default start method and why, which backends and extras are installed, and
  the Python build (free-threaded or not).
* ``python -m parloop bench [args]``: runs the benchmark suite of a source
  checkout (``python -m benchmarks [args]``).
* ``python -m parloop checkpoint FILE [--clear [NAME]]``: what a checkpoint
  file holds (functions, items done, size); ``--clear`` deletes results.

Nothing here imports an optional backend: ``find_spec`` answers whether it
is installed without paying for (or being broken by) its import.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from . import __version__, _cpu
from ._cpu import default_start_method
from ._cpu import thread_count as _thread_count
from .backends import REGISTRY

__all__ = ["info_lines", "main"]



def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError, AttributeError):
        # ValueError / AttributeError: sys.modules holds None or a module
        # without a spec for it, i.e. it was deliberately blocked.
        return False


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def _cpu_line() -> str:
    report = _cpu.cpu_report()
    return report.reason


def _start_method_line() -> str:
    method = default_start_method()
    if sys.platform != "linux":
        why = (f"not Linux ({sys.platform}): fork is unsafe with the system "
               "frameworks here, so workers start fresh")
    elif method == "fork":
        why = ("Linux, and this process has one thread; with other threads running "
               "it is forkserver, as a fork copies locks they hold and can hang")
    else:
        why = (f"this process has {_thread_count()} threads, and a fork copies "
               "locks they hold; a single-threaded caller on Linux gets fork")
    return f"{method} ({why})"


def _backend_lines() -> list[str]:
    built_in = [info.name for info in REGISTRY.values() if info.requires is None]
    lines = [f"{', '.join([*built_in, 'serial'])}: built in"]
    for info in REGISTRY.values():
        if info.requires is None:
            continue
        if _installed(info.requires):
            lines.append(f"{info.name}: installed ({info.requires} {_version(info.requires)})")
        else:
            lines.append(f"{info.name}: not installed (pip install 'parloop[{info.extra}]')")
    return lines


def _progress_line() -> str:
    if _installed("tqdm"):
        return f"tqdm {_version('tqdm')}: progress=True draws a tqdm bar"
    return ("tqdm not installed: progress=True prints a plain counter "
            "(pip install 'parloop[progress]' for a bar)")


def _python_line() -> str:
    implementation = platform.python_implementation()
    text = f"{implementation} {platform.python_version()} ({sys.executable})"
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        gil_enabled = getattr(sys, "_is_gil_enabled", lambda: True)()
        state = "enabled at run time" if gil_enabled else "disabled"
        return f"{text}; free-threaded build, GIL {state}"
    return f"{text}; standard build (with the GIL)"


def info_lines() -> list[str]:
    """The report ``python -m parloop info`` prints, one entry per line."""
    rows: list[tuple[str, list[str]]] = [
        ("parloop", [__version__]),
        ("usable CPUs", [_cpu_line()]),
        ("start method", [_start_method_line()]),
        ("backends", _backend_lines()),
        ("progress", [_progress_line()]),
        ("python", [_python_line()]),
    ]
    width = max(len(label) for label, _ in rows) + 2
    lines = []
    for label, values in rows:
        for i, value in enumerate(values):
            head = f"{label}:" if i == 0 else ""
            lines.append(f"{head:<{width}}{value}")
    workers = os.environ.get("PARLOOP_WORKERS")
    if workers:
        lines.append(f"{'':<{width}}PARLOOP_WORKERS={workers} overrides the worker count")
    return lines


def _find_benchmarks() -> Path | None:
    """The directory holding ``benchmarks/``: the current one, or the source
    checkout this parloop was installed from (``pip install -e``)."""
    source_root = Path(__file__).resolve().parents[2]
    for root in (Path.cwd(), source_root):
        if (root / "benchmarks" / "__main__.py").is_file():
            return root
    return None


def bench(args: Sequence[str]) -> int:
    root = _find_benchmarks()
    if root is None:
        print("parloop bench: the benchmark suite is not here. It ships with the source "
              "repository, not with the installed package:\n"
              "    git clone <parloop repository> && cd parloop\n"
              "    pip install -e '.[bench]'\n"
              "    python -m parloop bench      (or: python -m benchmarks)",
              file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, "-m", "benchmarks", *args], cwd=root)


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GB"


def checkpoint_lines(path: str, clear: str | None = None) -> list[str]:
    """The report ``python -m parloop checkpoint FILE`` prints (after
    deleting results when ``clear`` is given: "" for all, else a name)."""
    import time

    from ._checkpoint import Checkpoint

    checkpoint = Checkpoint(path)
    lines = []
    if clear is not None:
        from ._checkpoint import open_store

        store = open_store(path, create=False)
        try:
            module, _, qualname = clear.rpartition(":") if ":" in clear else ("", "", clear)
            deleted = store.clear(module or None, qualname or None) if clear else store.clear()
        finally:
            store.close()
        lines.append(f"cleared {deleted} results" + (f" of {clear}" if clear else ""))
    rows = checkpoint.summary()
    files = [path + suffix for suffix in ("", "-wal", "-shm")]
    size = sum(os.path.getsize(f) for f in files if os.path.exists(f))
    done = sum(row.done for row in rows)
    lines.append(f"{os.path.abspath(path)}: {len(rows)} function versions, {done} results, "
                 f"{_size(size)} on disk")
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.written or row.created))
        errors = f", {row.errors} errors" if row.errors else ""
        lines.append(f"  {row.module}:{row.qualname}  code {row.code[:8]}  args {row.args[:8]}  "
                     f"{row.done} done{errors}  {_size(row.size)}  last written {when}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m parloop``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m parloop",
        description="parloop: what it sees on this machine, and its benchmarks.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("info", help="usable CPUs, start method, backends, Python build")
    commands.add_parser("bench", help="run the benchmark suite (python -m benchmarks ARGS)",
                        add_help=False)
    summary = commands.add_parser(
        "checkpoint", help="what a checkpoint= file holds: functions, items done, size")
    summary.add_argument("file")
    summary.add_argument("--clear", nargs="?", const="", default=None, metavar="NAME",
                         help="delete the stored results first: all, or those of NAME "
                              "(a qualname such as 'sweep' or 'module:sweep')")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return bench(argv[1:])  # verbatim: the suite parses its own arguments
    args = parser.parse_args(argv)
    if args.command == "info":
        print("\n".join(info_lines()))
        return 0
    if args.command == "checkpoint":
        from .errors import CheckpointError

        try:
            print("\n".join(checkpoint_lines(args.file, args.clear)))
        except CheckpointError as exc:
            print(f"python -m parloop checkpoint: {exc}", file=sys.stderr)
            return 1
        return 0
    parser.print_help()
    return 2
