"""Where the array work of the data stage runs: the job's own threads, or a dask.distributed
scheduler (config key ``parallel.dask_scheduler``) whose workers may span several nodes.

Ingest, noise and segmentation build lazy dask graphs and compute them inside
:func:`array_scheduler`; the graph and its results are the same either way, so a store does
not depend on where it was computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from cosmo_sop.errors import InputError

#: The config key naming the scheduler, in messages.
KEY = "config key 'parallel.dask_scheduler'"

#: The environment variable through which the workflow hands the scheduler's address to the
#: commands (the default of their --dask-scheduler).
SCHEDULER_VARIABLE = "COSMO_SOP_DASK_SCHEDULER"


#: How long a job waits for the dask.distributed scheduler before it gives up.
CONNECT_TIMEOUT = "30s"


@contextlib.contextmanager
def array_scheduler(workers: int = 1, address: str | None = None) -> Iterator[None]:
    """Compute dask graphs inside the block with ``workers`` threads, or on the
    dask.distributed scheduler at ``address`` (then ``workers`` is the scheduler's business).

    Raises
    ------
    InputError
        If the scheduler cannot be reached (naming the address) or distributed is missing.
    """
    import dask  # here, not at the top: the command line imports this module for --help

    if address is None:
        with dask.config.set(scheduler="threads", num_workers=max(1, int(workers))):
            yield
        return
    try:
        from distributed import Client
    except ImportError:
        raise InputError(KEY, "needs the distributed package (pip install distributed)") from None
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(KEY, f"cannot reach the scheduler at {address} ({exc})") from None
    # Closing the client leaves the scheduler and its workers running for the next job.
    with client:
        yield
