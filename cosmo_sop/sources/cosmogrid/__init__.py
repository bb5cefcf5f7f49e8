"""The CosmoGridV1 release: its on-disk layout, its metainfo and its convergence maps.

The real release and the built-in mock (:mod:`cosmo_sop.sources.mock`) share the layout of
:mod:`~cosmo_sop.sources.cosmogrid.layout`, so the ingest step reads both the same way:
:func:`list_maps` chooses the map files that the config's ``cosmogrid`` section (or the mock)
selects and checks that they exist, :func:`read_kappa` reads the bins of one file. Every
malformed input raises :class:`~cosmo_sop.errors.InputError` naming the file and the problem.
"""

from cosmo_sop.sources.cosmogrid.layout import (
    IA_GROUP,
    INDEX_COLUMNS,
    KAPPA_GROUP,
    METAINFO_NAME,
    PARAMETER_COLUMNS,
    PATH_WIDTH,
    SIMULATION_SETS,
    cosmology_dir,
    cosmology_id,
    dataset_name,
    map_filename,
    map_path,
    metainfo_dtype,
    metainfo_path,
)
from cosmo_sop.sources.cosmogrid.maps import map_nside, read_kappa
from cosmo_sop.sources.cosmogrid.metainfo import (
    MapRecord,
    cosmology_ids,
    list_maps,
    perm_indices,
    read_parameters,
    read_simulations,
    select_cosmologies,
)

__all__ = [
    "IA_GROUP",
    "INDEX_COLUMNS",
    "KAPPA_GROUP",
    "METAINFO_NAME",
    "PARAMETER_COLUMNS",
    "PATH_WIDTH",
    "SIMULATION_SETS",
    "MapRecord",
    "cosmology_dir",
    "cosmology_id",
    "cosmology_ids",
    "dataset_name",
    "list_maps",
    "map_filename",
    "map_nside",
    "map_path",
    "metainfo_dtype",
    "metainfo_path",
    "perm_indices",
    "read_kappa",
    "read_parameters",
    "read_simulations",
    "select_cosmologies",
]
