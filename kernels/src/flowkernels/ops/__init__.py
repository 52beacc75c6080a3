"""One sub-package per op: ``naive.py`` reference, ``triton_fwd.py`` kernels, ``function.py`` entry points."""
