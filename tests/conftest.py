"""Fixtures shared by the test modules (the builders of tiny stores, runs and toy models live in
fixtures/, a package of helpers that are not tests)."""

from __future__ import annotations

import pytest
from fixtures.runs import TinyRuns

from cosmo_sop.explain import explain_split


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> TinyRuns:
    """The tiny stores and the models trained on them, each trained once per session, on use."""
    return TinyRuns(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def science_runs(tiny_runs, tmp_path_factory):
    """Backbone, X-DNN and segment-token SOP on tiny stores, and SOP's explanation store."""
    tiny_runs("backbone")
    tiny_runs("xdnn")
    explanations = explain_split(
        tiny_runs("sop"),
        tiny_runs.patches,
        tmp_path_factory.mktemp("science") / "explanations.zarr",
        tiny_runs.segments,
    )
    return tiny_runs.folder, tiny_runs.patches, tiny_runs.segments, explanations
