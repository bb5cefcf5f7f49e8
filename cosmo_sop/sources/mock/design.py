"""Cosmologies of the mock: a space-filling design in (Omega_m, sigma_8), the rest held fixed.

CosmoGridV1 varies six parameters on a Sobol sequence; the mock varies only the two that cosmo-sop
predicts, inside the box ``mock.prior``, and holds ``h, Omega_b, n_s, w_0`` at ``mock.fiducial``
(the CosmoGridV1 fiducial values by default). The table returned here has the parameter columns
of the CosmoGridV1 metainfo (:data:`cosmo_sop.sources.cosmogrid.PARAMETER_COLUMNS`) plus the index of each
point in the design, so the mock writes it into the metainfo unchanged.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping

import numpy as np
from scipy.stats import qmc

from cosmo_sop.config import defaults
from cosmo_sop.sources.cosmogrid.layout import PARAMETER_COLUMNS

#: Parameters that the design varies, in the order of the columns of the unit design.
VARIED_PARAMETERS = ("Om", "s8")
SAMPLERS = ("sobol", "lhs")

# Tag mixed into the seed of the design so that its random stream never coincides with
# another stream derived from the same master seed (maps, noise, training, ...). The tag
# spells the module's first name: changing it would change every mock.
_DESIGN_STREAM = zlib.crc32(b"cosmo_sop.cosmology.design")


def cosmology_dtype() -> np.dtype:
    """Structured dtype of a cosmology table: the metainfo parameter columns and ``sobol_index``."""
    return np.dtype([(name, "<f8") for name in PARAMETER_COLUMNS] + [("sobol_index", "<i8")])


def unit_design(n: int, sampler: str, seed: int) -> np.ndarray:
    """Space-filling points in the unit square.

    Parameters
    ----------
    n
        Number of points.
    sampler
        ``"sobol"``: scrambled Sobol sequence; ``"lhs"``: Latin hypercube.
    seed
        Master seed; the scrambling is drawn from a stream derived from it.

    Returns
    -------
    ndarray, shape (n, 2)
        Points in [0, 1)^2; column ``k`` belongs to ``VARIED_PARAMETERS[k]``.

    Notes
    -----
    For Sobol, the first ``n`` points of the scrambled sequence are taken from a draw of the next
    power of two (:meth:`~scipy.stats.qmc.Sobol.random_base2`). These are exactly the points that
    ``random(n)`` would return; drawing them this way avoids SciPy's warning that the balance
    properties of a Sobol sequence only hold for powers of two. A prefix is still a
    low-discrepancy set (better than i.i.d. uniform), and it is stable: the first ``n`` points do
    not change when ``n`` grows, so a larger mock extends a smaller one with the same seed.
    A Latin hypercube has no such prefix property: changing ``n`` changes every point.
    """
    if n < 1:
        raise ValueError(f"number of cosmologies must be positive, got {n}")
    rng = np.random.default_rng([seed, _DESIGN_STREAM])
    dims = len(VARIED_PARAMETERS)
    if sampler == "sobol":
        engine = qmc.Sobol(dims, scramble=True, rng=rng)
        return engine.random_base2(max(0, math.ceil(math.log2(n))))[:n]
    if sampler == "lhs":
        return qmc.LatinHypercube(dims, rng=rng).random(n)
    raise ValueError(f"unknown sampler {sampler!r}, expected one of {SAMPLERS}")


def draw_cosmologies(
    n: int,
    prior: Mapping[str, tuple[float, float]],
    fiducial: Mapping[str, float],
    *,
    sampler: str | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """Draw ``n`` flat wCDM cosmologies with (Omega_m, sigma_8) filling the prior box.

    Parameters
    ----------
    n
        Number of cosmologies.
    prior
        ``{"Om": (low, high), "s8": (low, high)}``: the box of the varied parameters.
    fiducial
        Fixed parameters ``h`` (H0 / 100 km s^-1 Mpc^-1), ``Ob``, ``ns``, ``w0``.
    sampler, seed
        See :func:`unit_design`; None takes the config's ``mock.sampler`` and ``seed``
        defaults.

    Returns
    -------
    ndarray of :func:`cosmology_dtype`
        One row per cosmology, in design order (``sobol_index`` = row, for either sampler).
        Derived columns follow CosmoGridV1: ``H0 = 100 h`` [km s^-1 Mpc^-1],
        ``O_cdm = Om - Ob`` (massless neutrinos, so ``m_nu = O_nu = 0``), ``Ol = 1 - Om`` (flat),
        ``wa = 0``. ``As`` is NaN: the mock normalises the power spectrum by sigma_8 with the
        Eisenstein & Hu transfer function, which defines no primordial amplitude (a Boltzmann
        code would be needed to convert). ``bary_Mc`` and ``bary_nu`` are NaN: no baryons.
    """
    sampler = defaults("mock.sampler") if sampler is None else sampler
    seed = defaults("seed") if seed is None else seed
    unit = unit_design(n, sampler, seed)
    table = np.zeros(n, dtype=cosmology_dtype())
    for column, name in enumerate(VARIED_PARAMETERS):
        low, high = prior[name]
        table[name] = low + (high - low) * unit[:, column]
    table["H0"] = 100.0 * fiducial["h"]
    table["Ob"] = fiducial["Ob"]
    table["ns"] = fiducial["ns"]
    table["w0"] = fiducial["w0"]
    table["wa"] = 0.0
    table["m_nu"] = 0.0
    table["O_nu"] = 0.0
    table["O_cdm"] = table["Om"] - table["Ob"]
    table["Ol"] = 1.0 - table["Om"]
    table["As"] = np.nan
    table["bary_Mc"] = np.nan
    table["bary_nu"] = np.nan
    table["sobol_index"] = np.arange(n)
    return table
