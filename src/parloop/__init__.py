"""parloop: one decorator turns a per-item function into a parallel loop.

>>> from parloop import parallel_for
>>> @parallel_for
... def square(x):
...     return x * x
>>> square(range(5))
[0, 1, 4, 9, 16]
"""

from typing import TYPE_CHECKING, Any

from ._cpu import cpu_count as cpu_count
from .errors import BackendUnavailableError as BackendUnavailableError
from .errors import CheckpointError as CheckpointError
from .errors import ParloopError as ParloopError
from .errors import ParloopWarning as ParloopWarning
from .errors import RemoteUnpicklingError as RemoteUnpicklingError
from .errors import SetupError as SetupError
from .errors import TaskTimeoutError as TaskTimeoutError
from .errors import UnpicklableError as UnpicklableError
from .errors import WorkerCrashedError as WorkerCrashedError

if TYPE_CHECKING:
    from ._checkpoint import Checkpoint as Checkpoint
    from ._entry import parallel_for as parallel_for
    from ._plan import Plan as Plan
    from ._types import ParallelFunction as ParallelFunction
    from .backends._state import worker_id as worker_id

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "Checkpoint",
    "CheckpointError",
    "ParallelFunction",
    "ParloopError",
    "ParloopWarning",
    "Plan",
    "RemoteUnpicklingError",
    "SetupError",
    "TaskTimeoutError",
    "UnpicklableError",
    "WorkerCrashedError",
    "cpu_count",
    "parallel_for",
    "worker_id",
]

# Imported when first asked for. A worker process, or parloop's fork server,
# imports parloop's backend modules, which run this file: they must not pay
# for the decorator (wrapt) nor the engine. ``from parloop import
# parallel_for`` loads what decorating needs, and no more.
_LAZY = {"parallel_for": "._entry", "Checkpoint": "._checkpoint", "Plan": "._plan",
         "ParallelFunction": "._types", "worker_id": ".backends._state"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'parloop' has no attribute {name!r}")
