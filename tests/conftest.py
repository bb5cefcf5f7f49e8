"""Fixtures shared by the test modules (builders of tiny stores and runs live in fixtures/)."""

from __future__ import annotations

import pytest
from test_model_runs import tiny_config, write_stores

from cosmo_sop.explain import explain_split
from cosmo_sop.training.runs import train_backbone, train_sop


@pytest.fixture(scope="session")
def science_runs(tmp_path_factory):
    """Backbone, X-DNN and segment-token SOP on tiny stores, and SOP's explanation store."""
    tmp = tmp_path_factory.mktemp("science")
    patches, segments = write_stores(tmp)
    config = tiny_config("segments")
    train_backbone(patches, tmp / "backbone", config)
    train_backbone(patches, tmp / "xdnn", config, bias_free=True)
    train_sop(patches, segments, tmp / "backbone", tmp / "sop", config)
    explanations = explain_split(tmp / "sop", patches, tmp / "explanations.zarr", segments)
    return tmp, patches, segments, explanations

