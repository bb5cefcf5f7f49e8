"""Where the convergence maps come from: the CosmoGridV1 release or the built-in mock.

:mod:`~cosmo_sop.sources.cosmogrid` knows the release's on-disk layout and reads it;
:mod:`~cosmo_sop.sources.mock` simulates lognormal maps and writes them in that same layout, so
that the ingest step (:mod:`cosmo_sop.ingest`) reads both the same way.
"""

from cosmo_sop.sources import cosmogrid, mock

__all__ = ["cosmogrid", "mock"]
