"""Fixtures shared by the test modules (the builders of tiny stores, runs and toy models live in
fixtures/, a package of helpers that are not tests)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fixtures import slurm
from fixtures.background import InBackground, end_running
from fixtures.runs import TinyRuns
from fixtures.workflow import WorkflowRun, run_workflow, shared_workflow_config

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


@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory) -> WorkflowRun:
    """The session's one end-to-end run of the workflow: ``snakemake --cores 2`` on the tiny
    config with every task (:func:`fixtures.workflow.shared_workflow_config`), run on first use
    and read by every test of its outputs (the end-to-end checks, the SLURM comparison)."""
    return run_workflow(tmp_path_factory.mktemp("workflow"), shared_workflow_config())


@pytest.fixture(scope="session", autouse=True)
def _slurm_in_the_background(request, tmp_path_factory) -> Iterator[InBackground | None]:
    """The SLURM run (:func:`fixtures.slurm.run_on_slurm`), started in a background thread when
    the session starts if a selected test reads it and it is asked for
    (``COSMO_SOP_TEST_SLURM=1``): it spends its minutes waiting on SLURM's status checks,
    while the other tests run (measured: 283 s of the suite in the foreground; its test now finds
    it finished)."""
    wanted = any("slurm_run" in item.fixturenames for item in request.session.items)
    run = None
    if wanted and slurm.requested() is None:
        run = InBackground(slurm.run_on_slurm, tmp_path_factory.mktemp("slurm"))
    yield run
    end_running()


@pytest.fixture(scope="session")
def slurm_run(_slurm_in_the_background) -> slurm.SlurmRun:
    """The tiny workflow through the SLURM profile; skipped unless asked for
    (``COSMO_SOP_TEST_SLURM=1``)."""
    reason = slurm.requested()
    if reason:
        pytest.skip(reason)
    return _slurm_in_the_background.result()
