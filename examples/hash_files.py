"""Checksum every file under a directory, in parallel.

A realistic small tool: walk a tree, SHA-256 each file in 1 MiB blocks (so a
huge file never sits in memory), and print a manifest summary. Without a
directory argument it first writes a demo tree of files into a temporary
directory and cleans it up afterwards.

Run it:  python examples/hash_files.py [DIR] [--backend auto|process|thread]
                                       [--start-method fork|forkserver|spawn]
(PARLOOP_START_METHOD works too). ``--backend auto`` lets parloop measure and
decide; the printed plan says what it chose and why.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from parloop import parallel_for

BLOCK = 1 << 20


@parallel_for
def sha256_of(path: Path) -> tuple[Path, str, int]:
    """The file's SHA-256 hex digest and its size in bytes."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as file:
        while block := file.read(BLOCK):
            digest.update(block)
            size += len(block)
    return path, digest.hexdigest(), size


def walk(root: Path) -> Iterator[Path]:
    """Every regular file under ``root``, in a stable order."""
    for directory, subdirectories, names in os.walk(root):
        subdirectories.sort()
        for name in sorted(names):
            path = Path(directory, name)
            if path.is_file() and not path.is_symlink():
                yield path


def write_demo_tree(root: Path, files: int, seed: int = 6) -> None:
    """``files`` files of 16 KiB to 4 MiB, spread over a few subdirectories."""
    chooser = random.Random(seed)
    for i in range(files):
        folder = root / f"batch-{i % 4}"
        folder.mkdir(exist_ok=True)
        size = chooser.choice([16, 64, 256, 1024, 4096]) * 1024
        (folder / f"file-{i:03d}.bin").write_bytes(chooser.randbytes(size))


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


Backend = Literal["auto", "process", "thread", "serial"]
StartMethod = Literal["fork", "forkserver", "spawn"]


def report(root: Path, backend: Backend, start_method: StartMethod | None) -> None:
    started = time.perf_counter()
    with parallel_for(backend=backend, start_method=start_method):
        manifest = sha256_of(walk(root))
    seconds = time.perf_counter() - started

    total = sum(size for _, _, size in manifest)
    print(f"hashed {len(manifest)} files, {human(total)} in {seconds:.2f} s "
          f"({human(total / seconds if seconds else 0)}/s)")
    for path, digest, size in manifest[:3]:
        print(f"  {digest[:16]}...  {human(size):>10}  {path.relative_to(root)}")
    if len(manifest) > 3:
        print(f"  ... and {len(manifest) - 3} more")

    # A second opinion from the caller, the plain way: the manifest must agree.
    for path, digest, _ in manifest:
        assert digest == hashlib.sha256(path.read_bytes()).hexdigest(), path
    print("verified: every digest matches a plain hashlib.sha256 in the caller")
    print(f"plan: {sha256_of.last_plan}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", type=Path,
                        help="the tree to hash (default: a generated demo tree)")
    parser.add_argument("--files", type=int, default=40, help="files in the demo tree")
    parser.add_argument("--backend", default="auto", choices=["auto", "process", "thread", "serial"])
    parser.add_argument("--start-method", choices=["fork", "forkserver", "spawn"],
                        default=None)  # None: parloop reads $PARLOOP_START_METHOD
    args = parser.parse_args()

    if args.directory is not None:
        report(args.directory, args.backend, args.start_method)
        return
    with tempfile.TemporaryDirectory(prefix="parloop-hash-") as temporary:
        root = Path(temporary)
        write_demo_tree(root, args.files)
        print(f"wrote {args.files} demo files under {root}")
        report(root, args.backend, args.start_method)


if __name__ == "__main__":
    main()
