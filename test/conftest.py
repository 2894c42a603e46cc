"""Shared fixtures. ``shard_factory`` builds tiny shard sets once per session and per distinct argument set."""

from __future__ import annotations

from collections.abc import Callable
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
