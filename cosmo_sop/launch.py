"""How the workflow starts a training command: one Python process, or torchrun's processes.

The training rules run ``<launcher> -m cosmo_sop train-...``, with the launcher that
:func:`training_launcher` gives for config keys ``training.gpus`` and ``training.nodes``:

- ``python``: one process (``gpus`` 0 or 1, one node);
- ``torchrun --standalone --nproc_per_node <gpus>``: one process per GPU of the node;
- on several nodes, ``srun`` starts one ``torchrun`` per node of the job's SLURM allocation,
  which meet at a rendezvous on its first node.

The processes train together as :mod:`cosmo_sop.training.distributed` describes. Standard
library only: Snakemake imports this module to write its rules, in an environment that need not
have PyTorch.
"""

from __future__ import annotations

#: Port of the multi-node rendezvous on the allocation's first node.
RENDEZVOUS_PORT = 29500


def training_launcher(gpus: int, nodes: int = 1) -> str:
    """The command that runs ``-m cosmo_sop train-...`` on ``gpus`` GPUs of each of ``nodes``.

    >>> training_launcher(0)
    'python'
    >>> training_launcher(4)
    'torchrun --standalone --nproc_per_node 4'
    """
    gpus, nodes = int(gpus), int(nodes)
    if gpus < 0 or nodes < 1:
        raise ValueError(f"need gpus >= 0 and nodes >= 1, got gpus={gpus}, nodes={nodes}")
    if nodes > 1:
        first_node = '$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
        return (
            f"srun --nodes {nodes} --ntasks-per-node 1"
            f" torchrun --nnodes {nodes} --nproc_per_node {max(gpus, 1)}"
            ' --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d'
            f" --rdzv_endpoint {first_node}:{RENDEZVOUS_PORT}"
        )
    if gpus > 1:
        return f"torchrun --standalone --nproc_per_node {gpus}"
    return "python"
