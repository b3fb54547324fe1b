"""parloop: one decorator turns a per-item function into a parallel loop.

>>> from parloop import parallel_for
>>> @parallel_for
... def square(x):
...     return x * x
>>> square(range(5))
[0, 1, 4, 9, 16]
"""

from ._cpu import cpu_count as cpu_count
from ._entry import parallel_for as parallel_for
from ._plan import Plan as Plan
from ._types import ParallelFunction as ParallelFunction
from .errors import BackendUnavailableError as BackendUnavailableError
from .errors import ParloopError as ParloopError
from .errors import ParloopWarning as ParloopWarning
from .errors import RemoteUnpicklingError as RemoteUnpicklingError
from .errors import TaskTimeoutError as TaskTimeoutError
from .errors import UnpicklableError as UnpicklableError
from .errors import WorkerCrashedError as WorkerCrashedError

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "ParallelFunction",
    "ParloopError",
    "ParloopWarning",
    "Plan",
    "RemoteUnpicklingError",
    "TaskTimeoutError",
    "UnpicklableError",
    "WorkerCrashedError",
    "cpu_count",
    "parallel_for",
]
