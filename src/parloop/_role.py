"""The role this process plays: a caller, or a parloop worker."""

#: True inside a parloop worker process: a nested parallel_for runs serially
#: there, so a pool never starts a pool (no fork bombs).
IN_WORKER = False
