"""The cluster backends, Dask (``dask``) and Ray (``ray``), and what they
share (``shared``): one remote task per chunk, the job's data shipped once."""
