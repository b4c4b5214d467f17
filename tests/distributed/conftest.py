"""A local Ray cluster for the tests that need one (skipped cleanly when Ray is not installed).

One cluster serves the whole session: starting Ray costs seconds on a 2-core machine. It has 2 CPUs, so two
replicas of one CPU each fit; every test stops its replicas before the next starts.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray tests need the extra: pip install 'plait[ray]'")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
