"""`plait serve --data-parallel-size`: flags, validation, and a clear message without the ray extra."""

from __future__ import annotations

import sys

import pytest

from plait.cli import build_parser, main


def test_serve_has_the_data_parallel_flags():
    args = build_parser().parse_args(["serve", "--data-parallel-size", "2", "--num-cpus-per-replica", "1",
                                      "--ray-address", "auto"])
    assert (args.data_parallel_size, args.num_cpus_per_replica, args.ray_address) == (2, 1, "auto")
    assert build_parser().parse_args(["serve"]).data_parallel_size == 1  # default: one local engine, no Ray


def test_bad_size_and_missing_ray_are_reported(monkeypatch, capsys):
    assert main(["serve", "--data-parallel-size", "0"]) == 2
    assert "--data-parallel-size must be >= 1" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--data-parallel-size", "2"])
    assert exit_info.value.code == 2
    assert "pip install 'plait[ray]'" in capsys.readouterr().err


def test_serve_has_the_pd_split_flags(monkeypatch, capsys):
    args = build_parser().parse_args(["serve", "--pd-split", "--kv-connector", "tcp"])
    assert (args.pd_split, args.kv_connector) == (True, "tcp")
    assert build_parser().parse_args(["serve"]).pd_split is False
    assert main(["serve", "--pd-split", "--data-parallel-size", "2"]) == 2
    assert "--pd-split" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--pd-split"])
    assert exit_info.value.code == 2
    assert "plait serve --pd-split" in capsys.readouterr().err
