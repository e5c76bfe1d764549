"""Fixtures of the misuse tests: the session's project cache and a finished smoke run per module
(read-only for the cases: a case that changes it works on a copy)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cache(shared_cache):
    return shared_cache


@pytest.fixture(scope="module")
def finished(cache, tmp_path_factory):
    """One finished 20-step purr run (``tests.e2e.test_misuse.finished_run``)."""
    from tests.e2e.test_misuse import finished_run

    return finished_run(cache, tmp_path_factory)
