"""Storage: atomic writes, Zarr stores, and the one JSON and one CSV writer.

Atomic writes: an output appears at its final path only once it is complete.

An interrupted run (Ctrl-C, a killed SLURM job, a full disk) must never leave a file or a Zarr
store that a rerun would take for finished work, so every writer in cosmo-sop writes to a hidden
sibling first and renames it into place at the end. A rename within one directory is atomic on
POSIX file systems.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import json
import math
import os
import re
import shutil
import socket
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from cosmo_sop import __version__
from cosmo_sop.errors import InputError

#: Zarr format of every store cosmo-sop writes. Version 2 keeps string coordinates and
#: consolidated metadata within a published specification, so other tools can read the stores.
ZARR_FORMAT = 2


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


#: The attribute that marks a Zarr store as written by cosmo-sop (every store has it: the
#: writers set it, and :func:`write_zarr` adds it where a dataset lacks it).
MARKER_ATTRIBUTE = "cosmo_sop_version"

#: Attributes that mark the stores written before every store carried :data:`MARKER_ATTRIBUTE`
#: (the faithfulness table named the stores it was computed from), so a rerun still replaces them.
_OLD_MARKERS: tuple[str, ...] = ("explanations_store",)


def _store_attributes(path: Path) -> dict[str, Any] | None:
    """The group attributes of the Zarr (format 2) store at ``path``; None if it is not one."""
    metadata = path / ".zmetadata"  # consolidated metadata, which every cosmo-sop store has
    try:
        if metadata.is_file():
            attrs = json.loads(metadata.read_text(encoding="utf-8"))["metadata"][".zattrs"]
        elif (path / ".zgroup").is_file():
            attrs = json.loads((path / ".zattrs").read_text(encoding="utf-8"))
        else:
            return None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    return attrs if isinstance(attrs, dict) else None


def written_by_cosmo_sop(path: str | os.PathLike) -> bool:
    """Whether the folder ``path`` is a Zarr store that cosmo-sop wrote (it has the group
    attribute :data:`MARKER_ATTRIBUTE`), which a rerun may replace."""
    attrs = _store_attributes(Path(path))
    return attrs is not None and any(key in attrs for key in (MARKER_ATTRIBUTE, *_OLD_MARKERS))


def check_replaceable(path: str | os.PathLike) -> None:
    """Refuse to write an output at ``path`` if a folder that cosmo-sop did not write is there.

    Writing an output replaces whatever is at its path, and a folder goes as a whole; a user's
    folder given as an output by mistake (``--output results``) would vanish with everything in
    it. Files and symbolic links (the link goes, not what it points to) are replaced as before.

    Raises
    ------
    InputError
        If ``path`` is a folder but not a Zarr store of cosmo-sop.
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink() and not written_by_cosmo_sop(path):
        raise InputError(
            path,
            "is a folder that cosmo-sop did not write (not one of its Zarr stores); refusing "
            "to replace it: give another output path, or remove the folder yourself",
        )


#: This machine in temporary names (a results folder may be shared by several hosts), with the
#: characters a file name should not hold replaced.
_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _temporary(path: Path) -> Path:
    """The temporary sibling this process writes ``path`` to: ``.<name>.tmp-<host>-<pid>``."""
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (signal 0 only checks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except (OverflowError, ValueError):  # no such pid can exist
        return False
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``path`` left by writers that were killed (SIGKILL, OOM, a
    lost node), and return them.

    Only temporaries of this host whose writer pid no longer exists are removed: a live
    writer's (another job writing the same path) and other hosts' (whose pids cannot be
    checked from here) are kept. Names without a host (``.<name>.tmp-<pid>``, written before
    hosts were recorded) count as this host's.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp-(?:(?P<host>.+)-)?(?P<pid>\d+)")
    removed = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        match = pattern.fullmatch(candidate.name)
        if match is None or match["host"] not in (None, _HOST):
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and not _pid_alive(pid):
            _remove(candidate)
            removed.append(candidate)
    return removed


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows: setting it (the
    only portable way to read it) would race with threads creating files meanwhile."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: Path) -> None:
    """Give ``path``, and for a folder all in it, the permissions the umask gives new files
    (``0o666 & ~umask``) and folders (``0o777 & ~umask``).

    Some writers choose narrower ones (safetensors writes 0600), which would hide results from
    collaborators sharing the results folder. Symbolic links are left alone.
    """
    mask = current_umask()
    modes = {False: 0o666 & ~mask, True: 0o777 & ~mask}

    def fix(entry: str | os.PathLike) -> None:
        info = os.lstat(entry)
        if stat.S_ISLNK(info.st_mode):
            return
        mode = modes[stat.S_ISDIR(info.st_mode)]
        if stat.S_IMODE(info.st_mode) != mode:
            os.chmod(entry, mode)

    fix(path)
    if path.is_dir() and not path.is_symlink():
        for folder, folders, files in os.walk(path):
            for name in (*folders, *files):
                fix(os.path.join(folder, name))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` and move it onto ``path`` when the block succeeds.

    Works for files and directories (Zarr stores) alike. If the block raises, the temporary
    output is removed and ``path`` is left exactly as it was. A process killed mid-write
    cannot clean up, so each write first removes the temporaries of ``path`` that dead writers
    left (:func:`remove_stale_temporaries`).

    Raises
    ------
    InputError
        If a folder that cosmo-sop did not write is at ``path`` (:func:`check_replaceable`),
        or the file system refuses the write (read-only, full, over quota, permission denied:
        :func:`unwritable`).
    """
    path = Path(path)
    check_replaceable(path)  # before any work: a refused output must cost nothing
    tmp = _temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        remove_stale_temporaries(_retired(path))
        _remove(tmp)
    except OSError as exc:  # every step here writes in the output's folder
        raise unwritable(path, exc) from None
    try:
        yield tmp
    except OSError as exc:
        _discard(tmp)
        if _is_write_error(exc, path):
            raise unwritable(path, exc) from None
        raise
    except BaseException:
        _discard(tmp)
        raise
    try:
        honour_umask(tmp)  # before the rename: the output never appears with narrower permissions
        _replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise unwritable(path, exc) from None
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path) -> None:
    """Remove a failed write's temporary; a file system that refuses even that (read-only)
    must not hide the error that brought us here."""
    with contextlib.suppress(OSError):
        _remove(tmp)


#: Errors only a write meets (a read never fills a disk or a quota, or meets a read-only mount).
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
#: Errors a write and a read share: the output's only where they name a path of the output.
_DENIED_ERRNOS = frozenset({errno.EACCES, errno.EPERM})


def _is_write_error(exc: OSError, path: Path) -> bool:
    """Whether ``exc``, raised while the output at ``path`` was written, is the file system
    refusing that write (and not, say, an input file that cannot be read)."""
    if exc.errno in _WRITE_ERRNOS:
        return True
    if exc.errno not in _DENIED_ERRNOS or exc.filename is None:
        return False
    # Zarr names absolute paths where the writer was given relative ones.
    refused = os.path.abspath(os.fspath(exc.filename))
    return refused.startswith(os.path.join(os.path.abspath(path.parent), ""))


def unwritable(path: str | os.PathLike, exc: OSError) -> InputError:
    """The one-line error for an output at ``path`` that the file system refused: the cause in
    words and its errno name, e.g. ``results/patches.zarr: cannot write: No space left on
    device [ENOSPC]``, and the path refused where it is not the output's own temporary."""
    path = Path(path)
    cause = exc.strerror or str(exc) or type(exc).__name__
    code = errno.errorcode.get(exc.errno) if exc.errno else None
    problem = f"cannot write: {cause}" + (f" [{code}]" if code else "")
    if exc.filename is not None:
        refused = os.path.abspath(os.fspath(exc.filename))
        if not refused.startswith((os.path.abspath(path), os.path.abspath(_temporary(path)))):
            problem += f" at {exc.filename}"
    return InputError(path, problem)


def move_into_place(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Move a complete file or store ``source`` onto ``path`` as :func:`atomic_path` does (with
    the umask's permissions, replacing an old output without a moment of none); for outputs
    that several processes build (:mod:`cosmo_sop.fanout`), where no single block writes them."""
    source, path = Path(source), Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(_retired(path))
    honour_umask(source)
    _replace(source, path)
    return path


def _replace(tmp: Path, path: Path) -> None:
    """Move ``tmp`` onto ``path``, so that a kill at any instant leaves at ``path`` the old
    output or the new one, never a part of either (nor, for a file, nothing: a kill while a
    checkpoint is replaced keeps the last epoch's)."""
    if not (tmp.is_dir() or path.is_dir()):
        os.replace(tmp, path)  # atomic, also over an existing file
        return
    # Checked again at the last moment: a folder may have appeared since the write began, and
    # a file (a figure, a record) never replaces a folder, not even a store.
    check_replaceable(path)
    if path.is_dir() and not path.is_symlink() and not tmp.is_dir():
        raise InputError(path, "is a folder; refusing to replace it with a file")
    # A directory cannot be renamed onto a non-empty one; removing the old store in place, file
    # by file, could be cut short and leave a store with holes. Renames cannot be.
    old = _temporary(_retired(path))
    _remove(old)
    if path.exists() or path.is_symlink():
        os.replace(path, old)
    os.replace(tmp, path)
    _remove(old)


def _retired(path: Path) -> Path:
    """Where the old output at ``path`` goes while the new one moves in (a temporary of it)."""
    return path.with_name(f"{path.name}.old")


def write_zarr(ds: xr.Dataset, path: str | os.PathLike, **to_zarr_kwargs) -> Path:
    """Write ``ds`` to a Zarr store at ``path`` atomically and return the path.

    Dask-backed variables are computed while writing, chunk by chunk, so the dataset never has
    to fit in memory. The store carries :data:`MARKER_ATTRIBUTE` (added if ``ds`` lacks it),
    by which a rerun knows it may replace it (:func:`check_replaceable`).
    """
    if MARKER_ATTRIBUTE not in ds.attrs:  # the mark by which a rerun may replace the store
        ds = ds.copy()
        ds.attrs = {**ds.attrs, MARKER_ATTRIBUTE: __version__}
    with atomic_path(path) as tmp:
        ds.to_zarr(tmp, mode="w", zarr_format=ZARR_FORMAT, consolidated=True, **to_zarr_kwargs)
    return Path(path)


#: Float variables whose values are checked in every store that has them: finite, and at most
#: :data:`MAX_MAGNITUDE` in size. One NaN pixel in a map otherwise turns its segmentation into
#: one segment, passes through the noise step and surfaces far downstream (an index error inside
#: entmax, a "non-finite training loss").
CHECKED_VARIABLES: tuple[str, ...] = ("kappa",)

#: The largest |value| a checked variable may hold. Convergence is of order 0.01 (below 1 but
#: in the densest clusters) and shape noise adds a few; a bound far above both still catches a
#: corrupt or mis-scaled map (1e30), which overflows float32 once a network scales and squares it.
MAX_MAGNITUDE = 1e6

#: Sample coordinates that name the first bad sample in the message, where the store has them.
_SAMPLE_NAMES: tuple[str, ...] = ("cosmology", "perm", "patch_index")


def open_zarr(
    path: str | os.PathLike, variables: tuple[str, ...] = (), *, check_values: bool = True
) -> xr.Dataset:
    """Open a cosmo-sop Zarr store lazily, with a clear error if it is missing or incomplete.

    Parameters
    ----------
    path
        The store.
    variables
        Variables (or coordinates) the store must have.
    check_values
        Refuse a store whose :data:`CHECKED_VARIABLES` are empty or hold NaN, infinity or
        values above :data:`MAX_MAGNITUDE`. The check reads the variable chunk by chunk and
        keeps one number per (sample, bin), so the store never has to fit in memory; it costs
        about one read of the variable (0.2 to 0.3 s for the demo's 430 MB patch store, 6144
        maps of 4 x 66 x 66, from the page cache).

    Raises
    ------
    InputError
        If the store is missing, unreadable, lacks one of ``variables`` or holds bad values
        (naming the first bad sample).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "Zarr store not found (run the step that writes it first)")
    try:
        ds = xr.open_zarr(path, consolidated=True)
    except Exception as exc:  # zarr raises a zoo of types for unreadable stores
        raise InputError(path, f"not a readable Zarr store ({type(exc).__name__}: {exc})") from None
    missing = [v for v in variables if v not in ds.variables]
    if missing:
        raise InputError(path, f"Zarr store lacks variable(s) {', '.join(missing)}")
    if check_values:
        for name in CHECKED_VARIABLES:
            if name in ds.data_vars and ds[name].dtype.kind in "fc":
                _check_values(path, ds, name)
    return ds


def _check_values(path: Path, ds: xr.Dataset, name: str) -> None:
    """Raise InputError if ``ds[name]`` is empty or not finite or too large somewhere, naming
    the first bad (sample, bin)."""
    if 0 in ds[name].shape:
        raise InputError(path, f"{name} is empty (sizes {dict(ds[name].sizes)})")
    kept = [d for d in ("sample", "bin") if d in ds[name].dims]
    variable = ds[name].transpose(*kept, ...)
    data = variable.data if isinstance(variable.data, da.Array) else da.asarray(variable.data)
    # The largest |value| per (sample, bin), chunk by chunk: NaN wins a max, so one number
    # tells all three faults, and only these numbers are ever in memory.
    axes = tuple(range(len(kept), data.ndim))
    try:
        peak = np.asarray(abs(data).max(axis=axes).compute())
    except Exception as exc:  # a corrupt chunk: zarr and its codecs raise many types
        raise InputError(path, f"cannot read {name} ({type(exc).__name__}: {exc})") from None
    bad = ~np.isfinite(peak)
    problem = "NaN or infinity"
    if not bad.any():
        bad = peak > MAX_MAGNITUDE
        problem = f"values above {MAX_MAGNITUDE:g} in magnitude (up to {peak.max():.3g})"
        if not bad.any():
            return
    first = dict(zip(kept, (int(i) for i in np.argwhere(bad)[0]), strict=True))
    where = [
        f"{coord} {ds[coord].values[first['sample']]}"
        for coord in _SAMPLE_NAMES
        if "sample" in first and coord in ds.coords and ds[coord].dims == ("sample",)
    ]
    if "bin" in first:
        where.append(
            f"bin {ds['bin'].values[first['bin']] if 'bin' in ds.coords else first['bin']}"
        )
    detail = f" ({', '.join(where)})" if where else ""
    if "sample" not in first:
        raise InputError(path, f"{name} holds {problem}{detail}")
    n_bad = int(bad.reshape(bad.shape[0], -1).any(axis=1).sum())
    raise InputError(
        path,
        f"{name} holds {problem} in {n_bad} of {bad.shape[0]} sample(s), "
        f"first in sample {first['sample']}{detail}",
    )


# --------------------------------------------------------------------------------------------
# Records: the one JSON writer and the one CSV writer of cosmo-sop (and their readers)


def finite_or_none(value: Any) -> float | None:
    """A float for JSON: None for NaN or infinity (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    """What :mod:`json` cannot encode by itself: numpy scalars and arrays, tensors, paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) or hasattr(value, "tolist"):  # also torch.Tensor
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_text(content: Any, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """``content`` as strict JSON text (NaN and infinity refused: pass them through
    :func:`finite_or_none`); numpy values, tensors and paths are converted."""
    return json.dumps(
        content, indent=indent, sort_keys=sort_keys, allow_nan=False, default=_jsonable
    )


def write_json(path: str | os.PathLike, content: Any, *, sort_keys: bool = False) -> Path:
    """Write ``content`` as indented JSON (see :func:`json_text`) atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(content, sort_keys=sort_keys) + "\n", encoding="utf-8")
    return path


def read_json(path: str | os.PathLike) -> Any | None:
    """The content of a JSON file; None if it does not exist, InputError if it is unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not a readable JSON file ({exc})") from None


def write_csv(
    path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> Path:
    """Write a header row and ``rows`` (values as given: format floats before) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_csv(path: str | os.PathLike) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows) of a CSV file; None if it does not exist, InputError if it is unreadable
    or ragged."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"not a readable CSV file ({exc})") from None
    if not rows or not rows[0]:
        raise InputError(path, "CSV file without a header row")
    width = len(rows[0])
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise InputError(path, f"line {number} has {len(row)} fields, the header {width}")
    return rows[0], rows[1:]
