"""Bad input fails fast with one line naming the fix; failures never leave a folder that looks like a shard set."""

from __future__ import annotations

import json

import pytest

from rk_siglip_ros.builder.build import BuildInputError, build_shards
from rk_siglip_ros.builder.verify import VerificationError
from rk_siglip_ros.cli.build_shards import main
from rk_siglip_ros.manifest import load_manifest


def _run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["--quiet", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _leftovers(folder) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.mark.parametrize(("args", "fragment"), [
    (["--model", "random:nope"], "unknown random preset"),
    (["--model", "/no/such/checkpoint"], "no such directory"),
    (["--model", "random:tiny", "--tile", "65"], "--tile 65 does not fit"),
    (["--model", "random:tiny", "--shards", "99"], "--shards 99"),
    (["--model", "random:tiny", "--scale", "0"], "--scale"),
    (["--model", "random:tiny", "--formats", "onnx,tflite"], "--formats"),
    (["--model", "random:tiny", "--dtype", "int8"], "--calibration"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, fragment):
    code, out, err = _run_cli(capsys, *args, "--out", str(tmp_path / "set"))
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _leftovers(tmp_path) == []


def test_checkpoint_problems_are_named(tmp_path, capsys):
    empty = tmp_path / "ckpt"
    empty.mkdir()
    code, _, err = _run_cli(capsys, "--model", str(empty), "--out", str(tmp_path / "a"))
    assert code == 2 and "config.json is missing" in err
    (empty / "config.json").write_text(json.dumps({"model_type": "siglip_vision_model"}))
    code, _, err = _run_cli(capsys, "--model", str(empty), "--out", str(tmp_path / "a"))
    assert code == 2 and "no *.safetensors" in err
    (empty / "model.safetensors").write_bytes(b"")
    (empty / "config.json").write_text(json.dumps({"model_type": "llama"}))
    code, _, err = _run_cli(capsys, "--model", str(empty), "--out", str(tmp_path / "a"))
    assert code == 2 and "model_type 'llama' is not supported" in err


def test_existing_output_needs_force(tmp_path, capsys):
    out = tmp_path / "set"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = _run_cli(capsys, "--model", "random:tiny", "--out", str(out), "--formats", "onnx")
    assert code == 2 and "--force" in err
    assert _leftovers(out) == ["notes.txt"]
    code, stdout, _ = _run_cli(capsys, "--model", "random:tiny", "--out", str(out), "--formats", "onnx", "--force")
    assert code == 0
    assert "notes.txt" not in _leftovers(out)
    assert len(load_manifest(out).shards) == 3
    assert _leftovers(tmp_path) == ["set"]  # no staging or replaced folders left next to it
    table = stdout.splitlines()
    assert table[0].split()[:3] == ["shard", "layers", "MMACs"]
    assert sum(line.startswith("s") and not line.startswith("shard") for line in table) == 3


def test_an_empty_existing_folder_is_fine(tmp_path):
    out = tmp_path / "set"
    out.mkdir()
    manifest = build_shards("random:tiny", out, profile="whole", formats=("onnx",), progress=False)
    assert manifest.root == out.resolve() and (out / "manifest.json").is_file()


def test_verification_failure_is_loud_and_leaves_nothing(tmp_path, capsys):
    # A host scale of 1e-30 underflows LayerNorm's variance in fp32: a real numerical failure, not a simulated one.
    with pytest.raises(VerificationError, match=r"shard s0 .* cos nan"):
        build_shards("random:tiny", tmp_path / "a", scale=1e-30, formats=("onnx",), progress=False)
    code, _, err = _run_cli(capsys, "--model", "random:tiny", "--out", str(tmp_path / "b"), "--scale", "1e-30",
                            "--formats", "onnx")
    assert code == 1 and "verification failed: shard s0" in err and "cos" in err
    assert _leftovers(tmp_path) == []


def test_build_input_error_is_a_value_error():
    assert issubclass(BuildInputError, ValueError)


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--out", "--profile", "--shards", "--tile", "--barrier", "--scale", "--target",
                   "--dtype", "--calibration", "--formats", "--no-verify", "--force"):
        assert option in text
