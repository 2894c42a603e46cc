"""selfcheck end to end: on the sim (manifest-only SigLIP-B/16 cuts) and on the RKNN-Lite test double (real tiny
shard sets), what it writes (profile JSON, params files the node accepts, report) and the board facts it reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from npu_geometry import write_shard_set

from rk_siglip_ros.cli.bench import main as bench
from rk_siglip_ros.cli.selfcheck import main as selfcheck
from rk_siglip_ros.manifest import load_manifest
from rk_siglip_ros.measure.selfcheck import UNKNOWN, board_facts
from rk_siglip_ros.node.config import LAUNCH_ARGUMENTS, launch_overrides, validate
from rk_siglip_ros.runtime.scheduler import MODES
from rk_siglip_ros.runtime.timing import load_timing_profile


def node_parameters(params_file) -> dict:
    """What ROS 2 hands encoder_node from a params file: the "/**" entry's ros__parameters."""
    return yaml.safe_load(params_file.read_text())["/**"]["ros__parameters"]


@pytest.fixture(scope="module")
def sim_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim_sets")
    return [write_shard_set(root / kind, kind, layers=2) for kind in ("whole", "pipeline3", "seed")]


def test_selfcheck_on_the_sim_writes_a_profile_params_files_and_a_report(sim_sets, tmp_path, capsys):
    out = tmp_path / "out"
    assert selfcheck(["--shards", *map(str, sim_sets), "--backend", "sim", "--out", str(out), "--frames", "3",
                      "--call-frames", "1", "--time-scale", "0.1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    results = report["results"]
    # split mode runs split shard sets only: skipped for these
    assert {(r["shards"], r["mode"]) for r in results} == {(str(s), m) for s in sim_sets for m in MODES if m != "split"}
    # what this machine does not expose is reported as unknown, not guessed
    assert report["board"]["librknnrt"] == UNKNOWN and f"librknnrt {UNKNOWN}" in printed

    fastest = max(results, key=lambda r: r["frames_per_s"])
    quickest = min(results, key=lambda r: r["latency_p50_ms"])
    for goal, best in (("throughput", fastest), ("latency", quickest)):
        parameters = node_parameters(out / f"{goal}.params.yaml")
        assert (parameters["shards"], parameters["mode"]) == (str(Path(best["shards"]).resolve()), best["mode"])
        assert parameters["backend"] == "sim" and parameters["cores"] == [0, 1, 2]
        # the node accepts the file as the launch file passes it: params file, then empty launch arguments
        config = validate({**parameters, **launch_overrides(dict.fromkeys(LAUNCH_ARGUMENTS, ""))})
        assert config.mode == best["mode"] and config.timing_profile == str((out / "profile.json").resolve())
        assert f"best for {goal}" in printed

    fitted = load_timing_profile(out / "profile.json")
    assert fitted.per_call_ms > 0 and fitted.all_cores_speedup["dense"] > 1.5
    assert "explains" in printed and "rms" in printed
    bench_json = tmp_path / "bench.json"
    assert bench(["--shards", str(sim_sets[0]), "--backend", "sim", "--modes", "replicas", "--frames", "3",
                  "--warmup", "0", "--timing-profile", str(out / "profile.json"), "--time-scale", "0.05",
                  "--json", str(bench_json)]) == 0
    assert json.loads(bench_json.read_text())[0]["timing_profile"] == "profile"


def test_one_shard_set_cannot_be_fitted_but_is_still_measured_and_chosen(sim_sets, tmp_path, capsys):
    """A single whole graph gives one kind of shard: the fit cannot separate per-call, dense and attention terms.
    selfcheck says so, writes no profile, and still writes the params files (the sim then runs its own profile)."""
    out = tmp_path / "out"
    assert selfcheck(["--shards", str(sim_sets[0]), "--backend", "sim", "--timing-profile", "rk3588-fp16",
                      "--out", str(out), "--modes", "replicas,allcores", "--frames", "3", "--call-frames", "1",
                      "--time-scale", "0.2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "no timing profile fitted" in printed and "several cuts" in printed
    assert not (out / "profile.json").exists() and json.loads((out / "report.json").read_text())["fit"] is None
    # whole x allcores: 404 ms against 860 ms for replicas under this profile, a gap no scheduling hiccup closes
    assert node_parameters(out / "latency.params.yaml")["mode"] == "allcores"
    assert node_parameters(out / "throughput.params.yaml")["timing_profile"] == "rk3588-fp16"


def test_selfcheck_runs_the_rknnlite_backend_through_the_double(rknnlite_double, shard_factory, tmp_path, capsys):
    sets = [shard_factory(profile="pipeline3", formats=("onnx", "rknn")),
            shard_factory(profile="whole", formats=("onnx", "rknn"))]
    out = tmp_path / "out"
    assert selfcheck(["--shards", *map(str, sets), "--out", str(out), "--frames", "2", "--call-frames", "1",
                      "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["backend"] == "rknnlite"  # auto chose it: the double imports and the sets have .rknn files
    assert report["board"]["librknnrt"].startswith("2.5.0") and report["board"]["driver"] == "0.9.8"
    assert report["board"]["problems"] == []
    assert {c["core"] for c in report["calls"]} == {"core 0", "core 1", "core 2", "cores 0-1-2"}
    assert node_parameters(out / "throughput.params.yaml")["backend"] == "rknnlite"
    assert "timing_profile" not in node_parameters(out / "throughput.params.yaml")  # sim only
    assert "NPU driver 0.9.8" in printed


def test_board_facts_from_what_the_board_exposes(sim_sets, tmp_path):
    """librknnrt from the library's banner, driver from debugfs, NPU clock from devfreq; too old a runtime for the
    shard set's toolkit is a problem that says what to do."""
    root = tmp_path / "board"
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/librknnrt.so").write_bytes(b"\x7fELF...\x00librknnrt version: 2.3.2 (429f97ae6b@2025-04-09)\x00")
    (root / "sys/kernel/debug/rknpu").mkdir(parents=True)
    (root / "sys/kernel/debug/rknpu/version").write_text("RKNPU driver: v0.9.8\n")
    devfreq = root / "sys/class/devfreq/fdab0000.npu"
    devfreq.mkdir(parents=True)
    (devfreq / "cur_freq").write_text("1000000000\n")
    (devfreq / "max_freq").write_text("1000000000\n")
    manifest = load_manifest(sim_sets[0], verify=())
    manifest.toolchain["rknn_toolkit2"] = "2.5.0"
    facts = board_facts({"b16": manifest}, root=root)
    assert facts.librknnrt.startswith("2.3.2") and facts.driver == "RKNPU driver: v0.9.8"
    assert facts.npu_clock == {"fdab0000.npu": "1000 MHz (max 1000 MHz)"}
    assert len(facts.problems) == 1 and "update librknnrt.so to >= 2.5.0" in facts.problems[0]
    sdk = "==\nRKNN VERSION:\n  API: 2.5.0 (abc@2025)\n  DRV: 0.9.9\n=="  # a context's report wins
    facts = board_facts({"b16": manifest}, sdk_version=sdk, root=root)
    assert (facts.librknnrt, facts.driver, facts.problems) == ("2.5.0 (abc@2025)", "0.9.9", [])
    empty = board_facts({"b16": manifest}, root=tmp_path / "nothing")
    assert (empty.librknnrt, empty.driver, empty.npu_clock) == (UNKNOWN, UNKNOWN, {})


@pytest.mark.parametrize("args", [["--modes", "turbo"], ["--frames", "0"], ["--image-size", "big"],
                                  ["--cores", "0,0"]])
def test_selfcheck_rejects_bad_arguments_with_status_2(sim_sets, args, capsys):
    try:
        status = selfcheck(["--shards", str(sim_sets[0]), "--backend", "sim", *args])
    except SystemExit as exit_info:  # argparse refuses --modes and --cores itself, with the same status
        status = exit_info.code
    assert status == 2 and "selfcheck: error:" in capsys.readouterr().err


def test_selfcheck_on_a_missing_shard_set_is_one_line_and_status_2(tmp_path, capsys):
    assert selfcheck(["--shards", str(tmp_path / "none"), "--backend", "sim", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("selfcheck: error: no shard set at")


def test_the_measuring_and_selfcheck_modules_need_no_dev_dependencies():
    """They run on the robot: importing them (and the CLIs) pulls in neither matplotlib nor the builder's stack."""
    code = ("import sys\nimport rk_siglip_ros.measure.bench, rk_siglip_ros.measure.selfcheck\n"
            "import rk_siglip_ros.measure.profile_fit\n"
            "import rk_siglip_ros.cli.bench, rk_siglip_ros.cli.selfcheck\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'torch', 'transformers', "
            "'rknn', 'scipy')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
