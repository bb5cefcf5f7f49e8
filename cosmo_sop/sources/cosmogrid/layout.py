"""The on-disk layout of the CosmoGridV1 release, shared by the reader and the built-in mock.

Layout (cosmogrid.ai data documentation)::

    <root>/CosmoGridV1_metainfo.h5
        parameters/{all,grid,fiducial,benchmark}   one row per cosmology
        simulations/{all,grid,fiducial,benchmark}  one row per (cosmology, permutation)
    <root>/stage3_forecast/<set>/cosmo_XXXXXX/perm_NNNN/projected_probes_maps_{baryonified,nobaryons}512.h5
        kg/stage3_lensing{1..4}   full-sky HEALPix convergence, RING order
        ia/stage3_lensing{1..4}   intrinsic-alignment template (kappa + A_IA * ia)

``path_par`` in the metainfo is fixed-width bytes such as ``b'CosmoGrid/raw/grid/cosmo_000001/'``;
the maps live under the same path with ``CosmoGrid/raw/`` replaced by ``stage3_forecast/``.
The file names keep the release's ``512`` whatever the nside: the mock writes the same names so
that one reader serves both, and the reader derives nside from the array length.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from cosmo_sop.errors import InputError

METAINFO_NAME = "CosmoGridV1_metainfo.h5"
SIMULATION_SETS = ("grid", "fiducial", "benchmark")
KAPPA_GROUP = "kg"
IA_GROUP = "ia"

#: Float columns of ``parameters/*`` and ``simulations/*``, in release order.
PARAMETER_COLUMNS = (
    "Om",
    "s8",
    "H0",
    "Ob",
    "ns",
    "w0",
    "wa",
    "m_nu",
    "O_cdm",
    "O_nu",
    "Ol",
    "As",
    "bary_Mc",
    "bary_nu",
)
#: Integer columns.
INDEX_COLUMNS = ("sobol_index", "seed_index", "id_param", "id_sim")
PATH_WIDTH = 64


def metainfo_dtype() -> np.dtype:
    """Structured dtype of the ``parameters/*`` and ``simulations/*`` tables."""
    fields = [(name, "<f8") for name in PARAMETER_COLUMNS]
    fields += [(name, "<i8") for name in INDEX_COLUMNS]
    fields += [("path_par", f"S{PATH_WIDTH}"), ("path_sim", f"S{PATH_WIDTH}")]
    return np.dtype(fields)


def dataset_name(group: str, tomo_bin: int) -> str:
    """HDF5 dataset of one tomographic bin (1-based), e.g. ``kg/stage3_lensing1``."""
    return f"{group}/stage3_lensing{tomo_bin}"


def map_filename(baryonified: bool) -> str:
    """File name of the projected-probes maps of one permutation."""
    kind = "baryonified" if baryonified else "nobaryons"
    return f"projected_probes_maps_{kind}512.h5"


def cosmology_dir(path_par: bytes | str) -> str:
    """Map folder (relative to the root) of a metainfo ``path_par`` entry.

    >>> cosmology_dir(b"CosmoGrid/raw/grid/cosmo_000001/")
    'stage3_forecast/grid/cosmo_000001'
    """
    text = path_par.decode() if isinstance(path_par, bytes) else path_par
    text = text.strip().rstrip("/")
    prefix = "CosmoGrid/raw/"
    if text.startswith(prefix):
        text = text[len(prefix) :]
    elif text.startswith("raw/"):
        text = text[len("raw/") :]
    return f"stage3_forecast/{text}"


def cosmology_id(path_par: bytes | str) -> str:
    """Cosmology id used throughout cosmo-sop: the folder name, e.g. ``cosmo_000001``."""
    return cosmology_dir(path_par).rsplit("/", 1)[-1]


def map_path(root: str | Path, path_par: bytes | str, perm: int, baryonified: bool) -> Path:
    """Full path of the maps file of one cosmology and permutation."""
    return Path(root) / cosmology_dir(path_par) / f"perm_{perm:04d}" / map_filename(baryonified)


def metainfo_path(root: str | os.PathLike) -> Path:
    """Path of the metainfo file under a release root."""
    return Path(root) / METAINFO_NAME


#: What h5py raises for a file whose content is damaged behind an intact signature: HDF5's
#: error stack surfaces as OSError, RuntimeError, KeyError or ValueError (depending on the
#: damaged structure: object header, B-tree, local heap, chunk), and a garbled link name as
#: TypeError or UnicodeDecodeError (a ValueError).
HDF5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


@contextlib.contextmanager
def hdf5_errors(path: Path, what: str) -> Iterator[None]:
    """Turn an h5py error raised in the block into an InputError naming ``path`` and ``what``.

    ``what`` names the object being read, e.g. ``"dataset 'kg/stage3_lensing1'"``; the HDF5
    message is kept on the same line (HDF5 messages can span lines).
    """
    try:
        yield
    except HDF5_ERRORS as exc:
        # str() of a KeyError quotes its message.
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        detail = " ".join(str(text).split()) or type(exc).__name__
        raise InputError(path, f"cannot read {what}, the file is damaged ({detail})") from None


@contextlib.contextmanager
def open_hdf5(path: Path) -> Iterator[h5py.File]:
    """Open a release file read-only; a missing or unreadable file is an InputError."""
    try:
        file = h5py.File(path, "r")
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except OSError as exc:
        raise InputError(path, f"not a readable HDF5 file ({exc})") from None
    # Anything the caller did not name more precisely is reported against the whole file.
    with file, hdf5_errors(path, "the file"):
        yield file
