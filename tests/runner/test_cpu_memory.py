"""glibc malloc settings around loading (runner/cpu_memory.py): large allocations get their own mappings while
loading, and the thresholds after it are the tuned ones or glibc's own ceilings, even when loading fails."""

import sys

import pytest

from plait.runner import cpu_memory


def recorded(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr(cpu_memory, "_mallopt", lambda settings: calls.append(dict(settings)) or True)
    return calls


@pytest.mark.parametrize("keep_after", [True, False])
def test_loading_scope_maps_large_allocations_then_sets_the_steady_state(monkeypatch, keep_after):
    calls = recorded(monkeypatch)
    with cpu_memory.loading_scope(keep_after=keep_after):
        assert calls == [{cpu_memory._M_MMAP_THRESHOLD: 128 << 10}]
    after = calls[-1]
    if keep_after:
        assert after == {cpu_memory._M_MMAP_THRESHOLD: 1 << 30, cpu_memory._M_TRIM_THRESHOLD: 1 << 30}
    else:
        assert after == {cpu_memory._M_MMAP_THRESHOLD: 32 << 20, cpu_memory._M_TRIM_THRESHOLD: 64 << 20}


def test_a_failed_load_still_leaves_the_steady_state(monkeypatch):
    calls = recorded(monkeypatch)
    with pytest.raises(RuntimeError):
        with cpu_memory.loading_scope(keep_after=False):
            raise RuntimeError("loading failed")
    assert calls[-1][cpu_memory._M_MMAP_THRESHOLD] == 32 << 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_glibc_accepts_every_value_used():
    for value in (128 << 10, 32 << 20, 1 << 30):
        assert cpu_memory._mallopt(((cpu_memory._M_MMAP_THRESHOLD, value),))
    assert cpu_memory._mallopt(((cpu_memory._M_TRIM_THRESHOLD, 64 << 20),))
    assert cpu_memory.keep_freed_memory()
