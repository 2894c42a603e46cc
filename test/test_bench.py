"""The bench CLI end to end: table, verdict, JSON and plot; the sim's three-core modes beat sequential."""

from __future__ import annotations

import json

import pytest

from rk_siglip_ros.cli.bench import main as bench


def test_bench_sim_reports_every_configuration(shard_factory, tmp_path, capsys):
    shards = [shard_factory(profile="pipeline3"), shard_factory(profile="seed")]
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    assert bench(["--shards", *map(str, shards), "--backend", "sim", "--frames", "6", "--warmup", "1",
                  "--timing-profile", "rk3588-fp16-rk1", "--time-scale", "0.05", "--json", str(out),
                  "--plot", str(chart)]) == 0
    printed = capsys.readouterr().out
    assert "highest throughput:" in printed and "lowest latency:" in printed
    results = json.loads(out.read_text())
    assert {(r["profile"], r["mode"]) for r in results} == {(p, m) for p in ("pipeline3", "seed")
                                                            for m in ("sequential", "pipeline", "replicas",
                                                                      "allcores")}
    for r in results:
        assert set(r["core_busy"]) == {"0", "1", "2"} and r["frames"] == 6
        assert r["latency_p50_ms"] > 0 and r["frames_per_s"] > 0 and r["compute_ms_per_frame"] > 0
        assert len(r["shard_ms"]) == (3 if r["profile"] == "pipeline3" else 6)
        assert r["timing_profile"] == "rk3588-fp16-rk1"
    sequential = {r["profile"]: r for r in results if r["mode"] == "sequential"}
    for r in results:
        if r["mode"] in ("pipeline", "replicas"):  # the winner the table must show: several cores at once
            assert r["frames_per_s"] > sequential[r["profile"]]["frames_per_s"]
        if r["mode"] == "allcores":  # one context on all three: busy on each alike
            assert len(set(r["core_busy"].values())) == 1
    assert chart.stat().st_size > 1000 and chart.read_bytes()[:4] == b"\x89PNG"


def test_bench_sim_runs_every_packaged_profile_side_by_side_and_takes_a_fitted_one(shard_factory, tmp_path, capsys):
    """NPU predictions are a range, never one number: by default each packaged profile runs; a profile JSON (such
    as selfcheck writes) is taken too."""
    fitted = tmp_path / "fitted.json"
    fitted.write_text(json.dumps({"name": "fitted", "per_call_ms": 1.0, "dense_ms_per_gmac": 50.0}))
    shards = str(shard_factory(profile="pipeline3"))
    out = tmp_path / "bench.json"
    assert bench(["--shards", shards, "--backend", "sim", "--modes", "replicas", "--frames", "3", "--warmup", "0",
                  "--time-scale", "0.05", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert {r["timing_profile"] for r in json.loads(out.read_text())} == {"rk3588-fp16", "rk3588-fp16-rk1"}
    assert "predicted range over 2 timing profiles" in printed and "[rk3588-fp16-rk1] highest throughput" in printed
    assert bench(["--shards", shards, "--backend", "sim", "--modes", "replicas", "--frames", "3", "--warmup", "0",
                  "--timing-profile", str(fitted), "--time-scale", "0.05", "--json", str(out)]) == 0
    assert [r["timing_profile"] for r in json.loads(out.read_text())] == ["fitted"]


def test_bench_onnxruntime_measures_host_overhead(shard_factory, tmp_path, capsys):
    """Host time is measured per step and adds up; a 1080p frame costs more preprocessing than a tiny one."""
    results = {}
    for size in ("1920x1080", "64x48"):
        out = tmp_path / f"{size}.json"
        assert bench(["--shards", str(shard_factory()), "--backend", "onnxruntime", "--modes", "pipeline",
                      "--frames", "3", "--image-size", size, "--json", str(out)]) == 0
        (results[size],) = json.loads(out.read_text())
    table = capsys.readouterr().out
    for r in results.values():
        steps = r["preprocess_ms"] + r["scales_ms"] + r["postprocess_ms"]
        assert r["host_ms_per_frame"] == pytest.approx(steps, rel=1e-6) and r["preprocess_ms"] > 0
        assert r["host_fraction"] == pytest.approx(r["host_ms_per_frame"] / r["compute_ms_per_frame"], rel=1e-6)
        assert f"{r['host_ms_per_frame']:.2f}" in table  # the table shows what was measured
    assert results["1920x1080"]["preprocess_ms"] > results["64x48"]["preprocess_ms"]


@pytest.mark.parametrize("args", [["--modes", "turbo"], ["--frames", "0"], ["--image-size", "big"]])
def test_bench_rejects_bad_arguments(shard_factory, args, capsys):
    try:
        status = bench(["--shards", str(shard_factory()), *args])
    except SystemExit as exit_info:  # argparse refuses these itself, with the same status
        status = exit_info.code
    assert status == 2
    assert "bench:" in capsys.readouterr().err


def test_text_bench_runs_every_step_on_a_tiny_model(tmp_path, capsys):
    """benchmarks/text_bench.py end to end on random:tiny: each figure measured, the ratios are of what it printed."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "text_bench.py"
    spec = importlib.util.spec_from_file_location("text_bench", path)
    text_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(text_bench)
    out = tmp_path / "text.json"
    assert text_bench.main(["--model", "random:tiny", "--out", str(tmp_path / "shards"), "--reps", "1",
                            "--frames", "1", "--labels", "50", "--search-frames", "300", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    scoring = results["label_scoring"]
    assert scoring["labels"] == 50 and scoring["score_ms"] > 0
    assert scoring["fraction_onnxruntime"] == pytest.approx(scoring["score_ms"] / scoring["encode_ms_onnxruntime"])
    assert results["text_tower"]["ms_per_label"] > results["text_tower"]["tokenizer_ms_per_label"] > 0
    assert results["search_bag"]["frames"] == 300 and results["search_bag"]["frames_per_s"] > 0
    printed = capsys.readouterr().out
    assert "(a) text tower, batch of 100" in printed and "(c) search_bag over 300 embeddings" in printed
