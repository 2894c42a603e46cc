"""Shared fixtures. ``shard_factory`` builds tiny shard sets once per session and per distinct argument set."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def shard_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """shard_factory(model="random:tiny", profile="pipeline3", formats=("onnx",), **build_kwargs) -> shard folder.

    Builds with rk_siglip_ros.builder.build.build_shards (verified, no progress bars) into a session temp dir and
    caches by arguments, so tests that ask for the same set share one build.
    """
    cache: dict[tuple[Any, ...], Path] = {}
    root = tmp_path_factory.mktemp("shards")

    def factory(model: str = "random:tiny", profile: str = "pipeline3", formats: tuple[str, ...] = ("onnx",),
                **build_kwargs: Any) -> Path:
        from rk_siglip_ros.builder.build import build_shards

        key = (model, profile, tuple(formats), tuple(sorted((k, repr(v)) for k, v in build_kwargs.items())))
        if key not in cache:
            out = root / f"set{len(cache)}-{model.replace(':', '_')}-{profile}"
            build_shards(model, out, profile=profile, formats=tuple(formats), progress=False, **build_kwargs)
            cache[key] = out
        return cache[key]

    return factory


DOUBLES = Path(__file__).resolve().parent / "doubles"


@pytest.fixture
def rknnlite_double(monkeypatch: pytest.MonkeyPatch) -> Any:
    """rknn-toolkit-lite2's ``rknnlite.api`` replaced by the test double in test/doubles (skips on a real board).

    Yields the double's module (its BOARD versions and LIVE contexts); every import of ``rknnlite`` during the test
    gets the double, and the modules are dropped afterwards so nothing leaks into other tests.
    """
    import importlib
    import sys

    from rk_siglip_ros.runtime.backends.rknnlite import rknnlite_available

    if rknnlite_available():
        pytest.skip("rknn-toolkit-lite2 is installed (a board): the on-board tests use the real one")
    monkeypatch.syspath_prepend(str(DOUBLES))
    module = importlib.import_module("rknnlite.api.rknn_lite")
    saved_board = dict(module.BOARD)
    yield module
    module.BOARD.update(saved_board)
    module.LIVE.clear()
    for name in [name for name in sys.modules if name == "rknnlite" or name.startswith("rknnlite.")]:
        del sys.modules[name]


@pytest.fixture(scope="session")
def tiny_siglip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny full SigLIP (vision + text, SentencePiece tokenizer) saved by transformers (tiny_checkpoints.py)."""
    from tiny_checkpoints import save_tiny_siglip

    return save_tiny_siglip(tmp_path_factory.mktemp("siglip-ckpt"))


@pytest.fixture(scope="session")
def tiny_text_shards(tiny_siglip_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """That checkpoint built with --text (ONNX only): the shard set the text-side tests share."""
    from rk_siglip_ros.builder.build import build_shards

    out = tmp_path_factory.mktemp("text-shards") / "set"
    build_shards(str(tiny_siglip_checkpoint), out, formats=("onnx",), progress=False, text=True)
    return out


@pytest.fixture
def node_log() -> Iterator[dict[str, list[str]]]:
    """The library's log lines as the node forwards them into its own log (node/log_bridge.py), by level."""
    from rk_siglip_ros.node.log_bridge import forward_library_logs

    lines: dict[str, list[str]] = {"debug": [], "info": [], "warn": [], "error": []}
    undo = forward_library_logs(*(lines[level].append for level in ("info", "warn", "error")))  # never "debug"
    try:
        yield lines
    finally:
        undo()


@pytest.fixture(scope="session")
def types() -> Any:
    """ROS 2 Humble message classes from rosbags: what the node's ROS-free parts are fed in tests (test_camera_frames
    has its own, one per distro)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE).types


@pytest.fixture(scope="session")
def toy_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy ONNX shard chain of test_manifest.write_toy_shards, shared read-only (copy it to alter it)."""
    from test_manifest import write_toy_shards

    return write_toy_shards(tmp_path_factory.mktemp("toy") / "toy")
