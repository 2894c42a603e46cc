"""Node parameters: validation with actionable errors, topic parsing, and the shipped YAML defaults."""

from pathlib import Path

import pytest
from ruamel.yaml import YAML

from rk_siglip_ros.node.config import (
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    LAUNCH_ARGUMENTS,
    PARAMETERS,
    ConfigError,
    default_shards_dir,
    launch_overrides,
    message_type_for,
    parse_topic_list,
    validate,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def shards(tmp_path) -> Path:
    folder = tmp_path / "shards" / "default"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")  # validate() only checks that a shard set is there
    return folder


def test_defaults_resolve_the_installed_shard_set(shards):
    share = shards.parent.parent
    config = validate({}, share_dir=share)
    assert config.shards == default_shards_dir(share) == shards
    assert (config.backend, config.mode, config.cores, config.qos) == ("auto", "pipeline", (0, 1, 2), "auto")
    assert config.image_topics == ("/camera/image_raw",) and config.output_topic == "siglip/embeddings"
    assert (config.labels_topic, config.patch_tokens_topic) == ("siglip/labels", "siglip/patch_embeddings")
    assert config.max_rate_hz == 0.0 and config.timing_profile is None and not config.publish_patch_tokens


def test_missing_shards_tell_the_user_the_build_command(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as error:
        validate({"shards": str(missing)})
    message = str(error.value)
    assert f"shards folder {missing} does not exist" in message
    assert f"build_shards --model google/siglip-base-patch16-512 --out {missing}" in message
    missing.mkdir()
    with pytest.raises(ConfigError, match="has no manifest.json"):
        validate({"shards": str(missing)})


def test_empty_shards_without_a_share_folder():
    with pytest.raises(ConfigError, match="shards:=<dir>"):
        validate({})


@pytest.mark.parametrize("name, value, message", [
    ("backend", "tpu", "backend must be one of auto|onnxruntime|rknnlite|sim"),
    ("mode", "parallel", "mode must be one of sequential|pipeline|replicas"),
    ("qos", "best_effort", "qos must be one of auto|sensor_data|reliable"),
    ("cores", [0, 3], "cores must be distinct NPU core ids"),
    ("cores", [1, 1], "cores must be distinct NPU core ids"),
    ("cores", [], "cores must be distinct NPU core ids"),
    ("image_topics", [], "image_topics must list at least one topic"),
    ("image_topics", ["/a", " "], "image_topics must list at least one topic"),
    ("image_topics", ["/a", "/a"], "image_topics lists a topic twice"),
    ("max_rate_hz", -1.0, "max_rate_hz must be a finite number >= 0"),
    ("max_rate_hz", float("inf"), "max_rate_hz must be a finite number >= 0"),
    ("max_rate_hz", "fast", "max_rate_hz must be a finite number >= 0"),
    ("max_rate_hz", True, "max_rate_hz must be a finite number >= 0"),
    ("max_rate_hz", "5", "max_rate_hz must be a finite number >= 0"),
    ("diagnostic_updater.period", 0.0, "diagnostic_updater.period must be a finite number > 0"),
    ("diagnostic_updater.period", 0, "diagnostic_updater.period must be a finite number > 0"),
    ("diagnostic_updater.period", "often", "diagnostic_updater.period must be a finite number > 0"),
    ("diagnostic_period", 2.0, "unknown parameters: diagnostic_period"),
    ("output_topic", "", "output_topic must not be empty"),
    ("no_such_parameter", 1, "unknown parameters: no_such_parameter"),
])
def test_bad_values_are_refused_with_the_parameter_name(shards, name, value, message):
    with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
        validate({"shards": str(shards), name: value})


@pytest.mark.parametrize("text", [
    "[/cam0/image_raw, /cam1/image_raw/compressed]",
    "/cam0/image_raw,/cam1/image_raw/compressed",
    "/cam0/image_raw /cam1/image_raw/compressed",
    "['/cam0/image_raw', \"/cam1/image_raw/compressed\"]",
    "  [ /cam0/image_raw ,, /cam1/image_raw/compressed ]  ",
])
def test_launch_argument_topic_lists(text):
    assert parse_topic_list(text) == ["/cam0/image_raw", "/cam1/image_raw/compressed"]


def test_launch_overrides_carry_only_the_arguments_the_user_set():
    nothing_set = dict.fromkeys(LAUNCH_ARGUMENTS, " ")
    assert launch_overrides(nothing_set) == {}  # the params file keeps its shards, topics, backend and mode
    assert launch_overrides({**nothing_set, "shards": " /data/shards/b16 ", "image_topics": "[/a, /b]",
                             "mode": "replicas"}) == {"shards": "/data/shards/b16", "image_topics": ["/a", "/b"],
                                                      "mode": "replicas"}
    assert launch_overrides({"backend": "sim", "image_topics": "[]"}) == {"backend": "sim"}


def test_shards_from_the_params_file_survive_an_unset_launch_argument(shards, tmp_path):
    """The launch file's layering: params file first, then the overrides; an empty shards:= changes nothing."""
    share = tmp_path / "share"
    params_file = {"shards": str(shards), "mode": "sequential"}
    config = validate({**params_file, **launch_overrides(dict.fromkeys(LAUNCH_ARGUMENTS, ""))}, share_dir=share)
    assert config.shards == shards and config.mode == "sequential"
    with pytest.raises(ConfigError, match=f"shards folder {default_shards_dir(share)} does not exist"):
        validate({**launch_overrides(dict.fromkeys(LAUNCH_ARGUMENTS, ""))}, share_dir=share)  # empty everywhere


def test_empty_topic_argument_means_none():
    assert parse_topic_list("") == [] and parse_topic_list("[]") == []


def test_compressed_topics_get_compressed_image():
    assert message_type_for("/cam1/image_raw/compressed") == COMPRESSED_TYPE
    assert message_type_for("/cam0/image_raw") == IMAGE_TYPE
    assert message_type_for("/cam0/compressed_view") == IMAGE_TYPE


def test_shipped_yaml_declares_every_parameter_with_its_default():
    document = YAML(typ="safe").load((REPO / "config" / "encoder.yaml").read_text())
    parameters = document["/**"]["ros__parameters"]
    assert parameters == {name: spec.default for name, spec in PARAMETERS.items()}


def test_integers_are_taken_for_every_float_parameter(shards):
    """People write `max_rate_hz: 5`; the node declares float parameters dynamically typed (ROS would otherwise
    refuse an INTEGER for a DOUBLE), so validate is their type check: ints in, floats out."""
    floats = [name for name, spec in PARAMETERS.items() if isinstance(spec.default, float)]
    assert floats and all(PARAMETERS[name].number for name in floats)
    config = validate({"shards": str(shards), "max_rate_hz": 5, "diagnostic_updater.period": 2})
    assert (config.max_rate_hz, config.diagnostic_period) == (5.0, 2.0)
    assert isinstance(config.max_rate_hz, float) and isinstance(config.diagnostic_period, float)
