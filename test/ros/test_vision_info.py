"""Model identity under real ROS 2: the node latches a vision_msgs/VisionInfo on siglip/vision_info, so a subscriber
that comes after it was published (transient_local) still gets it, with the checkpoint, the manifest's hash, the
shard set and a non-zero database_version; the README's consumer snippet accepts it for the same model and refuses
another model's."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import ros_support

ros_support.require_ros()

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from vision_msgs.msg import VisionInfo  # noqa: E402

from rk_siglip_ros.manifest import load_manifest  # noqa: E402
from rk_siglip_ros.messages.vision_info import POOLED, vision_info_fields  # noqa: E402
from rk_siglip_ros.model_identity import ModelIdentity, ModelMismatchError  # noqa: E402

TOPIC = "/siglip/vision_info"
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def readme_consumer_snippet() -> str:
    readme = (ros_support.REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    return next(block for block in blocks if "VisionInfo" in block and "check_same_model" in block)


def run_snippet(shards: Path, message: Any) -> None:
    """The README's snippet in a consumer node of its own; its subscription's callback gets ``message``'s twin from
    the node (latched), and whatever it raises comes out of spin_once here."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("readme_consumer", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    seen: list[Any] = []
    try:
        scope: dict[str, Any] = {"SHARDS": shards, "node": node}
        exec(readme_consumer_snippet(), scope)  # noqa: S102 - the README's own code, as a user pastes it
        (subscription,) = node.subscriptions
        callback = subscription.callback  # the snippet's on_vision_info; noting each call tells that it ran
        subscription.callback = lambda msg: (seen.append(msg), callback(msg))
        assert ros_support.wait_until(lambda: executor.spin_once(timeout_sec=0.1) or bool(seen), 30.0)
        assert seen[0].method == message.method
    finally:
        executor.shutdown(timeout_sec=1)
        node.destroy_node()
        context.try_shutdown()


def test_vision_info_is_latched_for_late_subscribers(installed_env: dict[str, str], tiny_shards: Path,
                                                     client: ros_support.RosClient, tmp_path: Path) -> None:
    params = ros_support.write_params(tmp_path / "params.yaml", shards=str(tiny_shards), backend="onnxruntime",
                                      image_topics=["/cam_info/image_raw"])
    with ros_support.running(ros_support.launch_node(installed_env, params_file=str(params))) as node:
        # The node is up (publishing embeddings) before anyone subscribes to its VisionInfo.
        assert ros_support.wait_until(lambda: client.node.count_publishers(ros_support.OUTPUT) > 0
                                      and client.node.count_publishers(TOPIC) > 0), node.output
        late = client.collect(VisionInfo, TOPIC, LATCHED)
        assert ros_support.wait_until(lambda: len(late) == 1), node.output
        message = late[0][1]

        manifest = load_manifest(tiny_shards)
        identity = ModelIdentity.of(manifest)
        expected = vision_info_fields(identity, POOLED, str(tiny_shards.resolve()))
        assert (message.method, message.database_location, message.database_version) == (
            expected["method"], expected["database_location"], expected["database_version"])
        assert message.method.startswith(f"random:tiny manifest-sha256:{identity.manifest_sha256} ")
        assert f"embedding_dim:{manifest.model.embedding_dim} embedding:pooled" in message.method
        assert message.database_version != 0

        run_snippet(tiny_shards, message)  # the same model: accepted
        other = tmp_path / "other-model"
        shutil.copytree(tiny_shards, other)
        data = json.loads((other / "manifest.json").read_text())
        data["model"]["source"] = "random:another-checkpoint"  # a shard set of another checkpoint
        (other / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(ModelMismatchError, match="embeddings of different models cannot be compared"):
            run_snippet(other, message)
        node.interrupt()
        assert node.wait() == 0, node.output
