"""--every: at most one frame per topic per interval of header time, in encode_bag (and index_bags, test_fleet)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from test_search_bag import STORE, header, photo

from rk_siglip_ros.bag.sampling import FrameSampler


def test_sampler_keeps_one_frame_per_interval_per_topic():
    sampler = FrameSampler(every_s=1.5)
    second = 1_000_000_000
    kept = [sampler.keep("/a", stamp * second, 0) for stamp in range(6)]
    assert kept == [True, False, True, False, True, False]
    assert sampler.keep("/b", 1 * second, 0)  # topics are sampled apart
    assert sampler.keep("/a", 1 * second, 0)  # a clock that jumps back restarts the interval
    assert sampler.keep("/c", 0, 5 * second) and not sampler.keep("/c", 0, 6 * second)  # no stamp: log time
    assert all(FrameSampler().keep("/a", 0, 0) for _ in range(3))
    with pytest.raises(ValueError, match="--every -1"):
        FrameSampler(every_s=-1)


def test_encode_bag_every_encodes_the_due_frames_and_copies_all(shard_factory, tmp_path):
    bag = tmp_path / "six"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/cam0/image_raw", "sensor_msgs/msg/Image", typestore=STORE)
        for index in range(6):
            message = STORE.types["sensor_msgs/msg/Image"](header=header(index, "cam0"), height=72, width=96,
                                                          encoding="rgb8", is_bigendian=0, step=288,
                                                          data=photo("astronaut").reshape(-1).copy())
            writer.write(connection, 10**18 + index, STORE.serialize_cdr(message, "sensor_msgs/msg/Image"))
    out = tmp_path / "six_emb"
    code = "import sys; from rk_siglip_ros.cli.encode_bag import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", code, str(bag), str(out), "--shards", str(shard_factory()),
                           "--every", "1.5", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "left out         3 frames (--every 1.5 s)" in done.stdout
    with Reader(out) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        stamps = [STORE.deserialize_cdr(raw, c.msgtype).header.stamp.sec
                  for c, _, raw in reader.messages([c for c in reader.connections if c.topic == "/siglip/embeddings"])]
    assert counts == {"/cam0/image_raw": 6, "/siglip/embeddings": 3, "/siglip/vision_info": 1}
    assert [stamp - 1_700_000_000 for stamp in stamps] == [0, 2, 4]
