"""The built-in mock of CosmoGridV1: lognormal convergence maps with halos, in the release's
layout.

Cosmologies fill the (Omega_m, sigma_8) prior on a Sobol design (:mod:`.design`); per cosmology
CCL gives the tomographic convergence spectra (:mod:`.spectra`), from which GLASS draws
correlated lognormal maps (:mod:`.lognormal`), on which Poisson-sampled NFW halos are painted
(:mod:`.halos`); :func:`simulate_mock` writes them, resuming and checking provenance
(:mod:`.simulate`, :mod:`.writer`). :mod:`.diagnostics` checks the halo mock's physics
against the lognormal-only mock. :mod:`.planted` is the planted-signal control
(``mock.planted``): maps in which the parameters act only through planted voids and clusters,
or, as the no-signal control, only through smooth fields.
"""

from cosmo_sop.sources.mock.design import cosmology_dtype, draw_cosmologies, unit_design
from cosmo_sop.sources.mock.halos import (
    HaloCatalogue,
    HaloLightcone,
    HaloModel,
    halo_convergence,
    one_halo_spectra,
)
from cosmo_sop.sources.mock.lognormal import (
    gaussian_spectra,
    generate_maps,
    lognormal_shifts,
    lognormal_transformations,
    map_rng,
)
from cosmo_sop.sources.mock.planted import PlantedComponents, PlantedMock
from cosmo_sop.sources.mock.simulate import (
    mock_settings,
    regenerate_map,
    simulate_cosmology,
    simulate_mock,
)
from cosmo_sop.sources.mock.spectra import (
    auto_spectra,
    ccl_cosmology,
    convergence_spectra,
    convergence_tracer,
    redshift_grid,
    tomographic_nz,
)
from cosmo_sop.sources.mock.writer import (
    MOCK_FORMAT,
    PROVENANCE_ATTR,
    config_record,
    map_provenance,
    metainfo_tables,
)

__all__ = [
    "HaloCatalogue",
    "HaloLightcone",
    "HaloModel",
    "MOCK_FORMAT",
    "PROVENANCE_ATTR",
    "PlantedComponents",
    "PlantedMock",
    "auto_spectra",
    "ccl_cosmology",
    "config_record",
    "convergence_spectra",
    "convergence_tracer",
    "cosmology_dtype",
    "draw_cosmologies",
    "gaussian_spectra",
    "generate_maps",
    "halo_convergence",
    "lognormal_shifts",
    "lognormal_transformations",
    "map_provenance",
    "map_rng",
    "metainfo_tables",
    "mock_settings",
    "one_halo_spectra",
    "redshift_grid",
    "regenerate_map",
    "simulate_cosmology",
    "simulate_mock",
    "tomographic_nz",
    "unit_design",
]
