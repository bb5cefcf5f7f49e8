"""Ingest: full-sky HEALPix convergence maps -> one Zarr store of flat patches.

Every map file of the release (or mock) is cut into gnomonic patches around the pixel centres
of a coarse HEALPix grid (:mod:`.patches`); the patches of all files form one dask-backed
dataset, split into train/val/test by cosmology (:mod:`.split`), written atomically
(:mod:`.run`; the workflow's ``ingest`` rule calls :func:`cosmo_sop.ingest.run.run`). With
``ingest.on_bad_map: skip``, files that cannot be read are left out and listed (:mod:`.bad_maps`).
"""

from cosmo_sop.ingest.patches import (
    check_patches_disjoint,
    extract_patches,
    min_centre_separation,
    patch_centres,
    patch_diagonal,
    patch_outline,
    patch_pixel_indices,
)
from cosmo_sop.ingest.run import aligned_chunk, ingest, patch_dataset
from cosmo_sop.ingest.split import SPLITS, split_cosmologies, split_counts

__all__ = [
    "SPLITS",
    "aligned_chunk",
    "check_patches_disjoint",
    "extract_patches",
    "ingest",
    "min_centre_separation",
    "patch_centres",
    "patch_diagonal",
    "patch_outline",
    "patch_pixel_indices",
    "patch_dataset",
    "split_cosmologies",
    "split_counts",
]
