"""`plait bench weight-update` end to end on a tiny Q4_1 GGUF, in fp32 (dense weights: an update with the model's
own weights must leave greedy tokens unchanged; in bf16 the 4-bit re-quantization may move a scale by one bf16
rounding, see plait/runner/q4_quantize.py, and this tiny model's near-tied logits can then flip)."""

import importlib.util
import json
from pathlib import Path

from plait.cli import build_parser

spec = importlib.util.spec_from_file_location("gguf_fixtures", Path(__file__).parents[1] / "loading" /
                                              "test_gguf_file.py")
fixtures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fixtures)


def test_weight_update_bench_times_every_kind_and_keeps_the_tokens(tmp_path, capsys):
    from plait.bench.weight_update import run_weight_update

    model = tmp_path / "tiny.gguf"
    fixtures.write_tiny_gguf(model, qtype=fixtures.Q.Q4_1)
    out = tmp_path / "wu.json"
    args = build_parser().parse_args(["bench", "weight-update", "--model", str(model), "--dtype", "float32",
                                      "--kv-cache-memory", "1048576", "--repeats", "2", "--buckets", "3",
                                      "-o", str(out)])
    result = run_weight_update(args)
    saved = json.loads(out.read_text())
    assert set(saved["kinds"]) == {"path", "state_dict", "buckets", "partial"}
    assert all(len(runs) == 2 for runs in saved["runs"].values())
    assert saved["config"]["partial_tensors"] > 0 and result["greedy_tokens_unchanged"]
    assert "weight-update" in capsys.readouterr().out
