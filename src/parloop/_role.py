"""The role this process plays: a caller, or a parloop worker."""

import sys

#: True inside a parloop worker process: a nested parallel_for runs serially
#: there, so a pool never starts a pool (no fork bombs).
IN_WORKER = False


def in_daemon_process() -> bool:
    """Inside a daemonic multiprocessing child (which may not start children).
    Read without importing multiprocessing, and safe while another thread is
    still importing it: then this is the main process, not a child."""
    module = sys.modules.get("multiprocessing.process")
    current = getattr(module, "_current_process", None)
    config = getattr(current, "_config", None)
    return isinstance(config, dict) and bool(config.get("daemon"))
