"""The llama.cpp baseline: `llama-batched-bench` for offline throughput, `llama-server` for serving load.

Both are built from the llama.cpp source vendored in the `llama-cpp-python` sdist on PyPI (pinned below, so a
result names the exact llama.cpp it ran against), CPU only, `-DGGML_NATIVE=ON`, without curl/OpenSSL or the web
UI download, and cached under `$PLAIT_CACHE/llama.cpp/<version>/` so it is built once (~11 minutes on 2 cores).
Anything that stops the build raises `LlamaCppUnavailable` with the reason; the benchmarks print it and go on
without this baseline.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
TARGETS = ("llama-server", "llama-batched-bench")
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF",
    # no network at build or run time: no curl/OpenSSL, no prebuilt web UI fetched from Hugging Face
    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
)
BATCHED_BENCH_COLUMNS = ("pp", "tg", "b", "n_kv", "t_pp", "s_pp", "t_tg", "s_tg", "t", "s")


class LlamaCppUnavailable(RuntimeError):
    """llama.cpp could not be fetched, built or started; the message says why."""


@dataclass(frozen=True)
class Paths:
    version: str
    root: Path
    server: Path
    batched_bench: Path


def paths_for(version: str = LLAMA_CPP_PYTHON_VERSION, cache: Path | None = None) -> Paths:
    from plait.loading.sources import default_cache_dir

    root = (cache or default_cache_dir()) / "llama.cpp" / version
    bin_dir = root / "build" / "bin"
    return Paths(version, root, bin_dir / "llama-server", bin_dir / "llama-batched-bench")


def ensure_llamacpp(version: str = LLAMA_CPP_PYTHON_VERSION, log: TextIO = sys.stderr) -> Paths:
    """The two binaries, building them first if this cache has none. Raises LlamaCppUnavailable."""
    paths = paths_for(version)
    if paths.server.is_file() and paths.batched_bench.is_file():
        return paths
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        raise LlamaCppUnavailable(f"cannot build llama.cpp: {', '.join(missing)} not found on PATH")
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second bench waits for the first one's build instead of racing it
        if paths.server.is_file() and paths.batched_bench.is_file():
            return paths
        src = paths.root / "src"
        if not (src / "CMakeLists.txt").is_file():
            _fetch_source(version, src, log)
        build_log = paths.root / "build.log"
        print(f"building llama.cpp (llama-cpp-python {version}) in {paths.root}; ~11 minutes on 2 cores, "
              f"once; log: {build_log}", file=log, flush=True)
        start = time.perf_counter()
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        steps = [["cmake", "-S", str(src), "-B", str(paths.root / "build"), *generator, *CMAKE_FLAGS],
                 ["cmake", "--build", str(paths.root / "build"), "--config", "Release", "-j", "2",
                  "--target", *TARGETS]]
        with open(build_log, "w") as out:
            for cmd in steps:
                out.write("$ " + " ".join(cmd) + "\n")
                out.flush()
                if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                    raise LlamaCppUnavailable(f"llama.cpp build failed ({cmd[1]} step):\n{_tail(build_log)}")
        if not (paths.server.is_file() and paths.batched_bench.is_file()):
            raise LlamaCppUnavailable(f"llama.cpp built but {paths.server.parent} lacks {' or '.join(TARGETS)}")
        print(f"llama.cpp built in {time.perf_counter() - start:.0f} s", file=log, flush=True)
    return paths


def ensure_quantize(paths: Paths, log: TextIO = sys.stderr) -> Path:
    """`llama-quantize`, built in the same tree if missing (an incremental build: the libraries exist already)."""
    binary = paths.server.parent / "llama-quantize"
    if binary.is_file():
        return binary
    build_log = paths.root / "build-quantize.log"
    print(f"building llama-quantize in {paths.root}; log: {build_log}", file=log, flush=True)
    with open(paths.root / ".lock", "w") as lock, open(build_log, "w") as out:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.is_file():
            cmd = ["cmake", "--build", str(paths.root / "build"), "--config", "Release", "-j", "2",
                   "--target", "llama-quantize"]
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode != 0 or not binary.is_file():
                raise LlamaCppUnavailable(f"building llama-quantize failed:\n{_tail(build_log)}")
    return binary


# llama.cpp formats the baseline may convert the given GGUF to ("file": the file as given). Converting a 4-bit file
# to BF16 or Q8_0 keeps its values (dequantized; Q8_0 requantized), so every format runs the same weights.
BASELINE_FORMATS = ("file", "bf16", "q8_0")


def convert_format(paths: Paths, model: str | Path, fmt: str, threads: int = 2, log: TextIO = sys.stderr) -> Path:
    """`model` in llama.cpp format `fmt` (one of BASELINE_FORMATS), converted once with `llama-quantize
    --allow-requantize` into the llama.cpp cache; "file" returns `model` itself. Raises LlamaCppUnavailable."""
    if fmt not in BASELINE_FORMATS:
        raise ValueError(f"llama.cpp format must be one of {', '.join(BASELINE_FORMATS)}, got {fmt!r}")
    model = Path(model)
    if fmt == "file":
        return model
    out = paths.root / "models" / f"{model.stem}.{fmt}.gguf"
    if out.is_file() and out.stat().st_mtime >= model.stat().st_mtime:
        return out
    binary = ensure_quantize(paths, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".part")
    print(f"converting {model.name} to {fmt.upper()} for the llama.cpp baseline ...", file=log, flush=True)
    done = subprocess.run([str(binary), "--allow-requantize", str(model), str(partial), fmt.upper(), str(threads)],
                          capture_output=True, text=True)
    if done.returncode != 0 or not partial.is_file():
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-10:])
        raise LlamaCppUnavailable(f"llama-quantize to {fmt.upper()} failed (exit {done.returncode}):\n{tail}")
    partial.replace(out)
    return out


def _fetch_source(version: str, dest: Path, log: TextIO) -> None:
    """pip-download the sdist and keep only its vendor/llama.cpp tree, as `dest`."""
    print(f"downloading llama-cpp-python {version} sdist for its llama.cpp source ...", file=log, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-deps",
               "--no-binary", ":all:", "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not sdists:
            raise LlamaCppUnavailable(f"cannot download the llama-cpp-python sdist: {done.stderr.strip()[-800:]}")
        prefix = f"{sdists[0].name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        with tarfile.open(sdists[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            if not members:
                raise LlamaCppUnavailable(f"{sdists[0].name} has no vendor/llama.cpp tree")
            tar.extractall(tmp, members=members, filter="data")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(str(Path(tmp) / prefix), dest)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def batched_bench_command(model: str | Path, input_len: int, output_len: int, parallel: int, threads: int = 2,
                          binary: str | Path = "llama-batched-bench", shared_prompt: bool = False) -> list[str]:
    """One `llama-batched-bench` case: `parallel` sequences, each an `input_len` prompt then `output_len` generated
    tokens. The prompts are distinct unless `shared_prompt`: then one prompt is computed once and every sequence
    continues it from one unified KV cache (`-pps -kvu`, llama.cpp's own way to share a prefix). The KV size is
    exactly what the case needs (a case that does not fit is skipped silently by the tool)."""
    ctx = input_len + parallel * output_len if shared_prompt else parallel * (input_len + output_len)
    return [str(binary), "-m", str(model), "-c", str(ctx), "-b", "2048", "-ub", "512",
            "-npp", str(input_len), "-ntg", str(output_len), "-npl", str(parallel),
            "-t", str(threads), "-tb", str(threads), "--output-format", "md",
            *(["-pps", "-kvu"] if shared_prompt else [])]


def parse_batched_bench(text: str) -> list[dict[str, float]]:
    """The rows of llama-batched-bench's markdown table (PP, TG, B, N_KV, T_PP s, S_PP t/s, T_TG s, S_TG t/s,
    T s, S t/s) as dicts keyed by BATCHED_BENCH_COLUMNS; counts are ints, times and speeds floats."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != len(BATCHED_BENCH_COLUMNS) or not re.fullmatch(r"\d+", cells[0]):
            continue  # the header, the rule and log lines
        values = [int(c) if i < 4 else float(c) for i, c in enumerate(cells)]
        rows.append(dict(zip(BATCHED_BENCH_COLUMNS, values)))
    return rows


def run_batched_bench(paths: Paths, model: str | Path, input_len: int, output_len: int, parallel: int,
                      threads: int = 2, shared_prompt: bool = False) -> dict[str, float]:
    """Run one case and return its row; LlamaCppUnavailable if the tool fails or prints no row."""
    cmd = batched_bench_command(model, input_len, output_len, parallel, threads, paths.batched_bench, shared_prompt)
    done = subprocess.run(cmd, capture_output=True, text=True)
    rows = parse_batched_bench(done.stdout + "\n" + done.stderr)
    if done.returncode != 0 or not rows:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise LlamaCppUnavailable(f"llama-batched-bench failed (exit {done.returncode}):\n{tail}")
    return rows[-1]


def server_context_size(parallel: int, max_input_len: int, output_len: int) -> int:
    """Total KV for llama-server: every slot gets ctx / parallel, which must hold a prompt and its output
    (plus a few tokens of slack, e.g. a BOS the server may add)."""
    return parallel * (max_input_len + output_len + 16)


def server_command(model: str | Path, port: int, parallel: int, ctx: int, threads: int = 2,
                   binary: str | Path = "llama-server") -> list[str]:
    """llama-server with one slot per concurrent client, continuous batching, loopback only."""
    return [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "--parallel", str(parallel), "--cont-batching", "-c", str(ctx),
            "-t", str(threads), "-tb", str(threads), "--no-webui"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class LlamaServer:
    """A running llama-server: where it listens, and its pid (so its peak RSS can be read before it stops)."""

    base_url: str
    pid: int


@contextlib.contextmanager
def llama_server(paths: Paths, model: str | Path, parallel: int, ctx: int, threads: int = 2,
                 startup_timeout: float = 180.0) -> Iterator[LlamaServer]:
    """Start llama-server on a free loopback port, wait until /health answers 200, yield it, stop it."""
    import httpx

    port = free_port()
    cmd = server_command(model, port, parallel, ctx, threads, paths.server)
    log_path = paths.root / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise LlamaCppUnavailable(f"llama-server exited with {proc.returncode}:\n{_tail(log_path)}")
            try:
                if httpx.get(base_url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise LlamaCppUnavailable(f"llama-server not healthy after {startup_timeout:.0f} s:\n"
                                          f"{_tail(log_path)}")
            time.sleep(0.25)
        yield LlamaServer(base_url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
