"""Ray Data: generate_dataset runs plait engines in map_batches actors; same greedy text as one engine."""

from __future__ import annotations

import pytest

from plait.distributed.data import PlaitProcessor, generate_dataset
from plait.params import SamplingParams
from tests.distributed.tiny_engine import TINY_SETTINGS, build_tiny

pytestmark = pytest.mark.ray


@pytest.mark.slow  # Ray Data starts its own executor and actor pool: about a minute on 2 cores
def test_generate_dataset_matches_one_engine(ray_cluster, make_engine):
    pytest.importorskip("ray.data", reason="Ray Data needs ray[data] (pyarrow, pandas)")
    params = SamplingParams(max_tokens=6, temperature=0.0)
    prompts = [f"Row {i} of a dataset larger than memory says" for i in range(12)]
    want = {p: o.outputs[0].text for p, o in zip(
        prompts, make_engine(num_threads=1).generate(prompts, params, use_tqdm=False))}
    ds = ray_cluster.data.from_items([{"prompt": p, "row": i} for i, p in enumerate(prompts)])
    rows = generate_dataset(ds, params, concurrency=2, batch_size=4, _engine_factory=build_tiny,
                            **TINY_SETTINGS).take_all()
    assert sorted(r["row"] for r in rows) == list(range(12))  # other columns pass through
    assert {r["prompt"]: r["generated_text"] for r in rows} == want
    assert all(r["num_generated_tokens"] == 6 for r in rows)


def test_processor_names_a_missing_column():
    proc = PlaitProcessor.__new__(PlaitProcessor)
    proc.prompt_column = "prompt"
    with pytest.raises(ValueError, match="prompt_column 'prompt' is not a column"):
        proc({"text": ["x"]})
