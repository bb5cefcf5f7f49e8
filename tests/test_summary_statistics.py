"""Power spectra, peak counts and the summary-statistics regressor (the classical baseline)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from fixtures.stores import draw_cosmologies, write_patch_store
from scipy.signal.windows import tukey

from cosmo_sop.config import defaults
from cosmo_sop.errors import InputError
from cosmo_sop.kappa import smooth_maps
from cosmo_sop.summary_statistics import (
    ARCMIN,
    ell_bin_edges,
    feature_names,
    fit_summary_regressor,
    local_extrema,
    peak_counts,
    power_spectra,
    predict,
    resolve_summary_config,
    run_summary_statistics,
    snr_edges,
    summary_features,
)

#: The schema's options of the analysis.
DEFAULTS = defaults("summary_statistics")

# --------------------------------------------------------------------------------------------
# Independent helpers: full-plane FFT (not the rfft of the module) Gaussian fields and bin means
# --------------------------------------------------------------------------------------------


def full_plane_ell(size: int, pixel_arcmin: float) -> np.ndarray:
    freq = 2 * np.pi * np.fft.fftfreq(size, d=pixel_arcmin * ARCMIN)
    return np.hypot(freq[:, None], freq[None, :])


def full_plane_bin_mean(
    values: np.ndarray, ell: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` over the full-plane modes of each bin (edges widened by rounding), and counts."""
    lo = edges[:-1].copy()
    lo[0] *= 1 - 1e-9
    hi = edges[1:].copy()
    hi[-1] *= 1 + 1e-9
    inside = (ell[None] >= lo[:, None, None]) & (ell[None] < hi[:, None, None])
    inside[-1] |= np.isclose(ell, hi[-1])
    counts = inside.sum(axis=(1, 2))
    return (inside * values[None]).sum(axis=(1, 2)) / counts, counts


def gaussian_fields(
    rng: np.random.Generator, shape: tuple[int, ...], pixel_arcmin: float, cl
) -> np.ndarray:
    """Periodic Gaussian random fields with angular power spectrum ``cl(ell)`` (sr), by FFT.

    Unit white noise has C_ell = pixel area, so its modes are scaled by sqrt(cl / pixel area).
    """
    size = shape[-1]
    ell = full_plane_ell(size, pixel_arcmin)
    spectrum = np.where(ell > 0, cl(np.where(ell > 0, ell, 1.0)), 0.0)  # no ell = 0 mode
    amplitude = np.sqrt(spectrum / (pixel_arcmin * ARCMIN) ** 2)
    modes = np.fft.fft2(rng.standard_normal(shape)) * amplitude
    return np.fft.ifft2(modes).real


def power_law(ell: np.ndarray) -> np.ndarray:
    return 1e-5 * ell**-2.0


# --------------------------------------------------------------------------------------------
# Power spectra
# --------------------------------------------------------------------------------------------


def test_ell_bins_span_fundamental_to_nyquist():
    edges = ell_bin_edges((66, 66), 13.7, 10)
    pixel = 13.7 * ARCMIN
    assert edges.size == 11
    assert edges[0] == pytest.approx(2 * np.pi / (66 * pixel))
    assert edges[-1] == pytest.approx(np.pi / pixel)
    assert np.allclose(np.diff(np.log(edges)), np.log(edges[1] / edges[0]))


def test_power_law_field_recovered():
    """Periodic GRFs with C_ell = A ell^-2: the binned spectrum equals the input averaged over
    the same modes, and the log-log slope is -2."""
    pixel, size = 10.0, 64
    fields = gaussian_fields(np.random.default_rng(1), (128, 1, size, size), pixel, power_law)
    edges = ell_bin_edges((size, size), pixel, 8)
    spectra, ell, pairs = power_spectra(fields, pixel, edges, cross=False, apodisation=0.0)
    assert spectra.shape == (128, 1, 8) and pairs.tolist() == [[0, 0]]
    measured = spectra[:, 0].mean(axis=0)
    full_ell = full_plane_ell(size, pixel)
    spectrum = power_law(np.where(full_ell > 0, full_ell, 1.0))  # ell = 0 lies in no bin
    expected, counts = full_plane_bin_mean(spectrum, full_ell, edges)
    mean_ell, _ = full_plane_bin_mean(full_ell, full_ell, edges)
    assert np.allclose(ell, mean_ell)
    middle = slice(2, 7)
    # Each bin's estimate averages 128 maps x (counts / 2) independent complex modes.
    sigma = 1 / np.sqrt(128 * counts / 2)
    assert np.all(np.abs(measured / expected - 1)[middle] < 5 * sigma[middle])
    slope = np.polyfit(np.log(ell[middle]), np.log(measured[middle]), 1)[0]
    assert slope == pytest.approx(-2.0, abs=0.1)


def test_apodised_cutouts_recover_power_law():
    """Non-periodic 64x64 cut-outs of a larger periodic field: the taper and its mean-square
    normalisation recover the input over the middle multipole bins."""
    pixel, big, size = 10.0, 256, 64
    fields = gaussian_fields(np.random.default_rng(2), (8, 1, big, big), pixel, power_law)
    cutouts = (
        fields.reshape(8, 1, 4, size, 4, size)
        .transpose(0, 2, 4, 1, 3, 5)
        .reshape(-1, 1, size, size)
    )
    edges = ell_bin_edges((size, size), pixel, 8)
    spectra, ell, _ = power_spectra(cutouts, pixel, edges, cross=False, apodisation=0.25)
    ratio = spectra[:, 0].mean(axis=0) / power_law(ell)
    assert np.all(np.abs(ratio[2:7] - 1) < 0.15), ratio


def white_noise_expectation(window: np.ndarray) -> np.ndarray:
    """Expected tapered spectrum of unit white noise after removing its window-weighted mean,
    in units of the pixel area, per full-plane mode.

    With m = sum(w k) / sum(w): E|DFT(w (k - m))|^2 = sum(w^2) - 2 Re(DFT(w^2) conj(DFT(w))) / sum(w)
    + sum(w^2) |DFT(w)|^2 / sum(w)^2, divided by the normalisation H W mean(w^2) = sum(w^2).
    """
    dft_w, dft_w2 = np.fft.fft2(window), np.fft.fft2(window**2)
    total, total2 = window.sum(), (window**2).sum()
    return (
        1 - 2 * np.real(dft_w2 * np.conj(dft_w)) / (total * total2) + np.abs(dft_w) ** 2 / total**2
    )


@pytest.mark.parametrize("apodisation", [0.0, 0.25, 1.0])
def test_white_noise_is_flat_at_variance_times_pixel_area(apodisation):
    """White noise of pixel variance s^2 has C_ell = s^2 * pixel area, up to the integral
    constraint of the mean removal on the lowest modes (zero without taper: then the window's
    transform vanishes at every mode but ell = 0)."""
    pixel, size, n, s = 5.0, 48, 96, 0.02
    noise = np.random.default_rng(3).normal(0.0, s, (n, 2, size, size)).astype(np.float32)
    edges = ell_bin_edges((size, size), pixel, 6)
    spectra, _, pairs = power_spectra(noise, pixel, edges, cross=True, apodisation=apodisation)
    assert pairs.tolist() == [[0, 0], [0, 1], [1, 1]]
    window = np.outer(tukey(size, apodisation), tukey(size, apodisation))
    factor, counts = full_plane_bin_mean(
        white_noise_expectation(window), full_plane_ell(size, pixel), edges
    )
    expected = s**2 * (pixel * ARCMIN) ** 2 * factor
    if apodisation == 0.0:
        np.testing.assert_allclose(factor, 1.0, atol=1e-12)
    else:  # the mean removal matters only in the lowest bins
        assert factor[0] < 0.99 and np.allclose(factor[3:], 1.0, atol=0.01)
    # The taper correlates neighbouring modes, widening the scatter; 6 sigma of the plain case.
    sigma = 1 / np.sqrt(n * counts / 2)
    mean = spectra.mean(axis=0)
    for auto in (0, 2):
        assert np.all(np.abs(mean[auto] / expected - 1) < 6 * sigma), mean[auto] / expected
    assert np.all(np.abs(mean[1] / expected) < 6 * sigma)  # independent bins: no cross power


def test_power_spectra_vectorised_equals_per_map_loop():
    patches = np.random.default_rng(4).standard_normal((5, 3, 24, 24)).astype(np.float32)
    edges = ell_bin_edges((24, 24), 8.0, 4)
    stacked, _, _ = power_spectra(patches, 8.0, edges)
    looped = np.concatenate([power_spectra(patches[i : i + 1], 8.0, edges)[0] for i in range(5)])
    assert stacked.shape == (5, 6, 4)
    np.testing.assert_allclose(stacked, looped, rtol=1e-12, atol=0)


def test_too_many_ell_bins_for_the_patch_is_an_error():
    with pytest.raises(ValueError, match="no Fourier mode"):
        power_spectra(np.zeros((1, 1, 8, 8)), 10.0, ell_bin_edges((8, 8), 10.0, 30))


# --------------------------------------------------------------------------------------------
# Peak counts
# --------------------------------------------------------------------------------------------


def planted_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat maps with isolated planted extrema; expected peak and minimum histograms."""
    maps = np.zeros((2, 2, 20, 20), dtype=np.float32)
    edges = snr_edges(DEFAULTS)  # -3 .. 6 in steps of 0.5: 18 bins
    peaks = np.zeros((2, 2, edges.size - 1))
    minima = np.zeros_like(peaks)
    plant = {
        (0, 0): [(3, 3, 1.2), (3, 10, 2.7), (10, 3, 5.5), (15, 15, 10.0), (8, 14, -2.6)],
        (0, 1): [(5, 5, 0.3), (12, 12, -4.0)],
        (1, 0): [],
        (1, 1): [(4, 16, 2.2), (16, 4, 2.3), (10, 10, -0.7)],
    }
    for (n, c), spikes in plant.items():
        for y, x, height in spikes:
            maps[n, c, y, x] = height
            # Open-ended outer bins: heights beyond the edges land in the first/last bin.
            k = int(np.clip(np.searchsorted(edges, height, side="right") - 1, 0, edges.size - 2))
            (peaks if height > 0 else minima)[n, c, k] += 1
    # Not extrema: a spike on the border, and the lower of two adjacent pixels.
    maps[0, 0, 0, 7] = 3.0
    maps[1, 0, 6, 6], maps[1, 0, 6, 7] = 4.0, 3.0
    peaks[1, 0, np.searchsorted(edges, 4.0, side="right") - 1] += 1
    return maps, peaks, minima


def test_planted_peaks_and_minima_are_counted_exactly():
    maps, peaks, minima = planted_maps()
    edges = snr_edges(DEFAULTS)
    scale = np.ones(2)
    np.testing.assert_array_equal(peak_counts(maps, edges, scale, kind="max"), peaks)
    np.testing.assert_array_equal(peak_counts(maps, edges, scale, kind="min"), minima)
    # Heights are in units of the per-bin scale: doubling it halves them.
    halved = peak_counts(maps, edges, np.array([2.0, 1.0]), kind="max")
    assert halved[0, 0, np.searchsorted(edges, 5.5 / 2, side="right") - 1] >= 1
    np.testing.assert_array_equal(halved[:, 1], peaks[:, 1])
    assert halved.sum() == peaks.sum()


def test_extrema_are_strict_and_never_on_the_border():
    maps = np.zeros((1, 1, 6, 6))
    maps[0, 0, 2, 2] = maps[0, 0, 2, 3] = 1.0  # plateau of two: neither is strictly above the other
    maps[0, 0, 0, 0] = 5.0  # corner
    assert not local_extrema(maps, "max").any()
    assert not local_extrema(maps, "min").any()  # the flat zero background is no minimum either


def test_peak_counts_vectorised_equals_per_map_loop():
    patches = np.random.default_rng(5).standard_normal((4, 3, 32, 32)).astype(np.float32)
    edges, scale = snr_edges(DEFAULTS), patches.std(axis=(0, 2, 3))
    for kind in ("max", "min"):
        stacked = peak_counts(patches, edges, scale, smoothing_pixels=1.0, kind=kind)
        looped = np.concatenate(
            [
                peak_counts(patches[i : i + 1], edges, scale, smoothing_pixels=1.0, kind=kind)
                for i in range(4)
            ]
        )
        np.testing.assert_array_equal(stacked, looped)
        assert stacked.sum() > 0


def test_feature_vector_layout_and_chunk_independence():
    patches = np.random.default_rng(6).standard_normal((6, 2, 24, 24)).astype(np.float32)
    config = {"ell_bins": 4}
    features = summary_features(patches, 10.0, np.ones(2), config)
    names = feature_names([1, 2], config)
    n_snr = snr_edges(DEFAULTS).size - 1
    assert features.shape == (6, 3 * 4 + 2 * 2 * n_snr) == (6, len(names))
    assert (
        names[0] == "logCl_1x1_l0"
        and names[4] == "r_1x2_l0"
        and names[-1] == f"minima_2_nu{n_snr - 1}"
    )
    halves = [
        summary_features(part, 10.0, np.ones(2), config) for part in (patches[:2], patches[2:])
    ]
    np.testing.assert_allclose(features, np.concatenate(halves))


# --------------------------------------------------------------------------------------------
# Regressors
# --------------------------------------------------------------------------------------------


def synthetic_problem(nonlinear: bool) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((700, 12)) * rng.uniform(0.1, 100, 12)  # features of mixed scales
    z = x / x.std(axis=0)
    if nonlinear:
        y = np.stack([z[:, 0] ** 2 - 1, np.tanh(z[:, 1] + z[:, 2])], axis=1)
    else:
        y = z[:, :4] @ rng.standard_normal((4, 2))
    y = y + 0.05 * rng.standard_normal(y.shape)
    y = (y - y[:400].mean(axis=0)) / y[:400].std(axis=0)
    return x[:400], y[:400], x[400:500], y[400:500], x[500:], y[500:]


@pytest.mark.parametrize("kind", ["mlp", "ridge"])
def test_regressors_learn_a_linear_problem(kind):
    x_tr, y_tr, x_va, y_va, x_te, y_te = synthetic_problem(nonlinear=False)
    regressor = fit_summary_regressor(
        x_tr, y_tr, x_va, y_va, seed=0, kind=kind, config={"progress": False}
    )
    mse = ((predict(regressor, x_te) - y_te) ** 2).mean(axis=0)
    assert np.all(mse < 0.05), mse


def test_mlp_learns_what_ridge_cannot_and_is_deterministic():
    x_tr, y_tr, x_va, y_va, x_te, y_te = synthetic_problem(nonlinear=True)
    config = {"progress": False}
    fits = [
        fit_summary_regressor(x_tr, y_tr, x_va, y_va, seed=seed, kind="mlp", config=config)
        for seed in (0, 0, 1)
    ]
    ridge = fit_summary_regressor(x_tr, y_tr, x_va, y_va, kind="ridge", config=config)
    mse_mlp = ((fits[0].predict(x_te) - y_te) ** 2).mean(axis=0)
    mse_ridge = ((ridge.predict(x_te) - y_te) ** 2).mean(axis=0)
    assert mse_mlp[0] < 0.2 < 0.8 < mse_ridge[0], (
        mse_mlp,
        mse_ridge,
    )  # z0^2: invisible to a linear map
    np.testing.assert_array_equal(fits[0].predict(x_te), fits[1].predict(x_te))
    assert not np.array_equal(fits[0].predict(x_te), fits[2].predict(x_te))
    assert fits[0].info["best_step"] <= fits[0].info["steps"]


def test_regressor_rejects_bad_shapes():
    with pytest.raises(ValueError, match="need features"):
        fit_summary_regressor(
            np.zeros((10, 3)), np.zeros((9, 2)), np.zeros((4, 3)), np.zeros((4, 2))
        )


# --------------------------------------------------------------------------------------------
# The analysis of a patch store
# --------------------------------------------------------------------------------------------

N_COSMO, N_PATCH, N_BINS, SIZE, PIXEL = 48, 4, 2, 48, 10.0


def write_store(path: Path, drop_pixel_scale: bool = False) -> Path:
    """A patch store after the contract: Gaussian fields whose amplitude is sigma_8 and whose
    slope depends on Omega_m, two correlated bins, split by cosmology."""
    rng = np.random.default_rng(8)
    cosmologies = draw_cosmologies(
        rng, N_COSMO, N_PATCH, splits=(32, 8, 8), om_range=(0.15, 0.45), s8_range=(0.5, 1.1)
    )
    om, s8, c = cosmologies.om, cosmologies.s8, cosmologies.index
    kappa = np.empty((c.size, N_BINS, SIZE, SIZE), np.float32)
    for i in range(N_COSMO):  # a loop over cosmologies of the test fixture, not over maps or pixels

        def spectrum(ell: np.ndarray, i: int = i) -> np.ndarray:
            return 1e-9 * s8[i] ** 2 * (ell / 300) ** -(1 + om[i])

        fields = gaussian_fields(rng, (N_PATCH, 1, SIZE, SIZE), PIXEL, spectrum)
        kappa[c == i] = np.concatenate([fields, 1.5 * fields], axis=1)
    kappa[:, 1] += rng.normal(0, 2e-3, kappa[:, 1].shape)
    drop = ("config", "cosmo_sop_version") + (("pixel_scale_arcmin",) if drop_pixel_scale else ())
    coords = cosmologies.coords()
    return write_patch_store(path, kappa, coords, pixel_arcmin=PIXEL, kappa_chunk=16, drop=drop)


CONFIG = {"ell_bins": 6, "minima": False, "progress": False, "max_steps": 1000, "seed": 0}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_store(tmp_path_factory.mktemp("summary") / "patches.zarr")


def test_run_summary_statistics_on_a_store(store, tmp_path):
    out = tmp_path / "out" / "summary.json"
    result = run_summary_statistics(store, out, CONFIG, workers=2)
    written = json.loads(out.read_text())
    assert written["mse_standardised"] == result["mse_standardised"]
    assert written["n_maps"] == {"train": 128, "val": 32, "test": 32}
    assert written["regressor"] == "mlp" and set(written["regressors"]) == {"mlp", "ridge"}
    assert written["n_features"] == len(written["feature_names"])
    for kind in ("mlp", "ridge"):
        mse = written["regressors"][kind]["mse_standardised"]
        assert mse["s8"] < 0.15, (kind, mse)  # the amplitude of the maps is sigma_8
        assert mse["Om"] < 0.9, (kind, mse)  # the slope depends on Omega_m (weakly, in 48x48 maps)
    # Physical MSE = standardised MSE times the variance of the train labels.
    std = np.array(written["label_scaler"]["std"])
    assert written["mse"]["s8"] == pytest.approx(written["mse_standardised"]["s8"] * std[1] ** 2)

    # The unit of the peak heights: std of the smoothed train maps of each bin, pooled over chunks.
    labels = xr.open_zarr(store)
    train = labels["kappa"].values[labels["split"].values == "train"]
    smoothed = smooth_maps(train, DEFAULTS["peak_smoothing_pixels"]).astype(np.float64)
    np.testing.assert_allclose(
        list(written["peak_scale"].values()), smoothed.std(axis=(0, 2, 3)), rtol=1e-10
    )

    saved = np.load(out.with_suffix(".npz"))
    assert (
        saved["true"].shape
        == saved["predicted_mlp"].shape
        == saved["predicted_ridge"].shape
        == (32, 2)
    )
    np.testing.assert_array_equal(saved["true"][:, 1], labels["s8"].values[saved["sample"]])
    assert set(labels["split"].values[saved["sample"]]) == {"test"}
    mse_s8 = np.mean((saved["predicted_mlp"][:, 1] - saved["true"][:, 1]) ** 2)
    assert mse_s8 == pytest.approx(written["mse"]["s8"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["summary.json", "summary.npz"]

    # Rerun with another chunking: the same features (to rounding: BLAS sums in another
    # order for another batch size), hence the same results.
    again = run_summary_statistics(store, tmp_path / "again.json", CONFIG | {"chunk_samples": 7})
    for kind in ("mlp", "ridge"):
        assert again["regressors"][kind]["mse"] == pytest.approx(
            result["regressors"][kind]["mse"], rel=1e-9
        )
    assert (
        again["regressors"]["mlp"]["fit"]["best_step"]
        == result["regressors"]["mlp"]["fit"]["best_step"]
    )
    # And the same chunking gives bit-identical results.
    same = run_summary_statistics(store, tmp_path / "again.json", CONFIG)
    assert same["regressors"] == result["regressors"]


def test_run_summary_statistics_bad_input(store, tmp_path):
    with pytest.raises(InputError, match="not found"):
        run_summary_statistics(tmp_path / "missing.zarr", tmp_path / "x.json", CONFIG)
    with pytest.raises(InputError, match="summary_statistics.ell_bin"):
        run_summary_statistics(store, tmp_path / "x.json", {"ell_bin": 3})
    with pytest.raises(InputError, match="ell_bins"):
        run_summary_statistics(store, tmp_path / "x.json", CONFIG | {"ell_bins": 40})
    broken = write_store(tmp_path / "broken.zarr", drop_pixel_scale=True)
    with pytest.raises(InputError, match="pixel_scale_arcmin"):
        run_summary_statistics(broken, tmp_path / "x.json", CONFIG)
    assert not any(p.suffix in {".json", ".npz"} for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("apodisation", 1.5),
        ("regressors", ["forest"]),
        ("hidden", [0]),
        ("snr_step", 0.0),
        ("seed", 1.5),
        ("cross_spectra", "yes"),
        ("ridge_alphas", []),
        ("chunk_samples", 0),
    ],
)
def test_config_is_checked(key, value):
    with pytest.raises(InputError, match=f"summary_statistics.{key}"):
        resolve_summary_config({key: value})
    assert resolve_summary_config(None)["ell_bins"] == DEFAULTS["ell_bins"]
    assert resolve_summary_config(None)["seed"] == defaults("seed")  # null: the master seed
    assert math.isclose(snr_edges(DEFAULTS)[-1], 6.0)
