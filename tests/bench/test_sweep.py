"""`plait bench sweep`: grid parsing, config files, and a 2-point sweep on a tiny engine (no speed asserted)."""

from __future__ import annotations

import argparse
import json

import pytest

from plait.bench.sweep import (add_sweep_parser, best_point, load_config, make_grid, parse_param, parse_params,
                               parse_value, run_sweep, write_config)


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_sweep_parser(parser.add_subparsers(dest="bench_command"))
    return parser.parse_args(["sweep", *argv])


def test_parse_values_and_params():
    assert [parse_value(v) for v in ("16", "0.5", "true", "False", "none", "2GiB")] == [16, 0.5, True, False,
                                                                                         None, "2GiB"]
    assert parse_param("max_num_seqs=16,32,64") == ("max_num_seqs", [16, 32, 64])
    assert parse_param("max-num-batched-tokens=256, 512") == ("max_num_batched_tokens", [256, 512])
    assert parse_param("enable_prefix_caching=true,false") == ("enable_prefix_caching", [True, False])
    for bad in ("max_num_seqs", "nope=1,2", "max_num_seqs=", "max_num_seqs=1,1"):
        with pytest.raises(ValueError):
            parse_param(bad)
    with pytest.raises(ValueError, match="twice"):
        parse_params(["max_num_seqs=1", "max_num_seqs=2"])
    with pytest.raises(ValueError, match="at least one"):
        parse_params([])


def test_grid_is_the_product_in_order():
    grid = make_grid(parse_params(["max_num_seqs=16,32", "max_num_batched_tokens=256,512,2048"]))
    assert len(grid) == 6
    assert grid[0] == {"max_num_seqs": 16, "max_num_batched_tokens": 256}
    assert grid[1] == {"max_num_seqs": 16, "max_num_batched_tokens": 512}
    assert grid[-1] == {"max_num_seqs": 32, "max_num_batched_tokens": 2048}


def test_best_point_skips_failures():
    points = [{"settings": {"a": 1}, "output_tps": 5.0}, {"settings": {"a": 2}, "error": "x"},
              {"settings": {"a": 3}, "output_tps": 9.0, "total_tps": 1.0}, {"settings": {"a": 4}, "output_tps": 9.0}]
    assert best_point(points)["settings"] == {"a": 3}  # ties keep the earlier point
    assert best_point(points, "total_tps")["settings"] == {"a": 3}
    assert best_point([{"settings": {}, "error": "x"}]) is None


def test_config_round_trip_and_validation(tmp_path):
    path = write_config(tmp_path / "c.json", {"max_num_seqs": 32, "max_num_batched_tokens": 512}, {"metric": "m"})
    assert json.loads(path.read_text())["_sweep"] == {"metric": "m"}
    assert load_config(path) == {"max_num_seqs": 32, "max_num_batched_tokens": 512}
    (tmp_path / "bad.json").write_text(json.dumps({"max_num_seqz": 3}))
    with pytest.raises(ValueError, match="unknown engine settings"):
        load_config(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text(json.dumps({"block_size": 0}))
    with pytest.raises(ValueError):
        load_config(tmp_path / "bad2.json")


def test_two_point_sweep_on_tiny_engine(make_engine, tmp_path, capsys):
    out = tmp_path / "sweep.json"
    args = _args("--param", "max_num_seqs=2,4", "--workload", "fixed", "--num-prompts", "4", "--input-len", "8",
                 "--output-len", "3", "--no-tqdm", "--no-warmup", "--output", str(out))
    built = []

    def factory(settings):
        built.append(settings)
        return make_engine(**settings)

    assert args.func is run_sweep and run_sweep(args, engine_factory=factory) == 0
    assert built == [{"max_num_seqs": 2}, {"max_num_seqs": 4}]
    summary = json.loads(out.read_text())
    assert summary["benchmark"] == "sweep" and summary["params"] == {"max_num_seqs": [2, 4]}
    assert [p["settings"] for p in summary["points"]] == built
    for p in summary["points"]:
        assert p["output_tps"] > 0 and p["effective"]["max_num_seqs"] == p["settings"]["max_num_seqs"]
        point = json.loads(open(p["result_file"]).read())
        assert point["config"]["max_num_seqs"] == p["settings"]["max_num_seqs"]
        assert point["plait"]["runs"][0]["output_tokens"] == 12
    assert summary["best"] in summary["points"]
    config = load_config(summary["config_file"])
    assert config == summary["best"]["settings"]  # no other flag differed from the defaults
    assert not list(tmp_path.glob("point-*.json"))  # per-point JSON lives in a sub-folder
    text = capsys.readouterr().out
    assert "plait bench sweep" in text and "best:" in text


def test_sweep_records_a_failing_point(make_engine, tmp_path):
    args = _args("--param", "max_num_seqs=2,3", "--workload", "fixed", "--num-prompts", "2", "--input-len", "4",
                 "--output-len", "2", "--no-tqdm", "--no-warmup", "--output", str(tmp_path / "s.json"))

    def factory(settings):
        if settings["max_num_seqs"] == 3:
            raise ValueError("not this one")
        return make_engine(**settings)

    assert run_sweep(args, engine_factory=factory) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert "not this one" in summary["points"][1]["error"]
    assert summary["best"]["settings"] == {"max_num_seqs": 2}

    def always_fails(settings):
        raise ValueError("no")

    args.output = str(tmp_path / "f.json")
    assert run_sweep(args, engine_factory=always_fails) == 1
    assert json.loads((tmp_path / "f.json").read_text())["best"] is None
