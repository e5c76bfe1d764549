"""pytest plumbing for tests that run jobs on a real single-machine SLURM cluster.

`pytest tests/cluster` brings a cluster up once per session (see .ci/slurm/cluster.py), runs the
tests against it and stops every daemon it started. Options (pytest registers them only when
tests/cluster is named on the command line; a bare `pytest` still runs these tests, use
$SLURM_CONF there):

    --slurm-conf PATH   use the live cluster of this slurm.conf (default: $SLURM_CONF, if that
                        cluster answers) instead of starting one; it is left running
    --slurm-dir DIR     start the cluster in DIR instead of a pytest temp dir (its logs stay there)

Missing Debian packages are apt-get installed when running as root (set VQFLOW_SLURM_INSTALL=0 to
forbid that). If the cluster cannot be started the tests are skipped with the reason, except under
CI=true, where they fail. Every test here is marked `cluster` and, with pytest-timeout, gets a
timeout of CLUSTER_TEST_TIMEOUT_S (bring-up included).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CLUSTER_PY = HERE.parents[1] / ".ci" / "slurm" / "cluster.py"
CLUSTER_TEST_TIMEOUT_S = 300
BRING_UP_TIMEOUT_S = 180.0


def _load_cluster_module():
    spec = importlib.util.spec_from_file_location("vqflow_ci_slurm_cluster", CLUSTER_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


slurm = _load_cluster_module()
_timings: dict[str, float] = {}  # what the session measured, printed in the terminal summary


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("slurm", "real SLURM cluster (tests/cluster)")
    group.addoption(
        "--slurm-conf",
        default=None,
        metavar="PATH",
        help="use the live SLURM cluster of this slurm.conf instead of starting one",
    )
    group.addoption(
        "--slurm-dir",
        default=None,
        metavar="DIR",
        help="start the SLURM cluster in DIR (kept after the run) instead of a temp dir",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items: touch only those under tests/cluster.
    with_timeout = config.pluginmanager.hasplugin("timeout")
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.cluster)
            if with_timeout and item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(CLUSTER_TEST_TIMEOUT_S))


def pytest_terminal_summary(terminalreporter) -> None:
    if _timings:
        terminalreporter.write_sep("-", "SLURM cluster timings (noisy: shared 2-core machine)")
        for name, seconds in _timings.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f} s")


@pytest.fixture(scope="session")
def slurm_timings() -> dict[str, float]:
    """Durations (seconds) by name; tests add what they measure, the terminal summary prints them."""
    return _timings


def _cannot_run(reason: str) -> None:
    """Skip (fail under CI=true) the cluster tests: the cluster is not available here."""
    message = f"SLURM cluster unavailable: {reason}"
    print(message, file=sys.stderr)
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _live_cluster(config: pytest.Config):
    """The cluster named by --slurm-conf (must answer) or by $SLURM_CONF (if it answers), else None."""
    explicit = config.getoption("slurm_conf", default=None)
    if explicit:
        try:
            return slurm.attach(explicit)
        except slurm.ClusterError as e:
            _cannot_run(f"--slurm-conf {explicit}: {e}")
    from_env = os.environ.get("SLURM_CONF")
    if from_env:
        try:
            return slurm.attach(from_env)
        except slurm.ClusterError as e:
            print(f"SLURM_CONF={from_env} is not a live cluster ({e}); starting a private one", file=sys.stderr)
    return None


@pytest.fixture(scope="session")
def slurm_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A live cluster: `.conf`, `.env` (applied to os.environ for the session), `.partition`,
    `.urgent_partition` (preempts `.partition` jobs by requeue, or None), `.cpus`, `.run(*argv)`."""
    live = _live_cluster(request.config)
    if live is not None:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in live.env.items():
                mp.setenv(key, value)
            yield live
        return

    missing = slurm.missing_packages()
    if missing:
        if os.environ.get("VQFLOW_SLURM_INSTALL", "1") == "0":
            _cannot_run(f"packages {missing} are missing and VQFLOW_SLURM_INSTALL=0 forbids installing them")
        try:
            started = time.monotonic()
            slurm.install_packages()
            _timings["apt-get install"] = time.monotonic() - started
        except slurm.ClusterError as e:
            _cannot_run(str(e))

    chosen = request.config.getoption("slurm_dir", default=None)
    root = Path(chosen).resolve() if chosen else tmp_path_factory.mktemp("slurm")
    started = time.monotonic()
    try:
        cluster = slurm.up(root, timeout=BRING_UP_TIMEOUT_S)
    except slurm.ClusterError as e:
        _cannot_run(f"bring-up in {root} failed: {e}")
    _timings["bring-up"] = time.monotonic() - started
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in cluster.env.items():
                mp.setenv(key, value)
            yield cluster
    finally:
        started = time.monotonic()
        slurm.down(root)
        _timings["teardown"] = time.monotonic() - started
        left = [name for name, pid in slurm.status(root)["daemons"].items() if pid is not None]
        assert not left, f"daemons {left} of the SLURM cluster in {root} are still running after down()"
