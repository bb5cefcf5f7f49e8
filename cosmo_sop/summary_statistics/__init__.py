"""The classical baseline: power spectra and peak counts of the patches, regressed to (Om, s8).

``spectra`` computes binned flat-sky power spectra of a stack of patches, ``peaks`` their peak
and minimum counts, ``features`` the feature vector of each map from both, ``regressor`` fits
the small MLP or ridge regression from those to the standardised parameters, ``options``
completes the ``summary_statistics`` config section with the schema's defaults, and ``run`` is
the workflow's ``summary_statistics`` step: features of a whole patch store, the fits, the test
errors to ``summary_statistics.json``.
"""

from cosmo_sop.summary_statistics.features import feature_names, summary_features
from cosmo_sop.summary_statistics.options import resolve_summary_config
from cosmo_sop.summary_statistics.peaks import local_extrema, peak_counts, snr_edges
from cosmo_sop.summary_statistics.regressor import (
    REGRESSORS,
    SummaryRegressor,
    fit_summary_regressor,
    predict,
)
from cosmo_sop.summary_statistics.run import run_summary_statistics
from cosmo_sop.summary_statistics.spectra import (
    ARCMIN,
    apodisation_window,
    ell_bin_edges,
    power_spectra,
    spectrum_features,
    spectrum_pairs,
)

__all__ = [
    "ARCMIN",
    "REGRESSORS",
    "SummaryRegressor",
    "apodisation_window",
    "ell_bin_edges",
    "feature_names",
    "fit_summary_regressor",
    "local_extrema",
    "peak_counts",
    "power_spectra",
    "predict",
    "resolve_summary_config",
    "run_summary_statistics",
    "snr_edges",
    "spectrum_features",
    "spectrum_pairs",
    "summary_features",
]
