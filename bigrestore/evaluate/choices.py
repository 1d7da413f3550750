"""Choices of ``bigrestore evaluate``'s options, in a module with no heavy imports: the command
line builds its ``--help`` from them without loading numpy, scipy or dask."""

from __future__ import annotations

NORMALIZE = ("percentile", "linear-fit", "none")
"""Intensity modes (see :mod:`bigrestore.evaluate.pairing`)."""
