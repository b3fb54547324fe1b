"""parloop's benchmark suite: parloop against a plain loop and its peers.

Run it from the repository root with ``python -m benchmarks`` (see README.md).
"""
