"""Embedding <-> sensor_msgs/Image fields, on real message classes (rosbags typestores, Humble and Jazzy)."""

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from rk_siglip_ros.messages.embedding_msg import EMBEDDING_ENCODING, embedding_fields, embedding_from_message

STORES = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}


@pytest.fixture(scope="module", params=sorted(STORES))
def store(request):
    return get_typestore(STORES[request.param])


def camera_header(store):
    stamp = store.types["builtin_interfaces/msg/Time"](sec=1700000000, nanosec=123456789)
    return store.types["std_msgs/msg/Header"](stamp=stamp, frame_id="front_camera_optical")


def unit_vector(dim: int, seed: int = 0) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def test_vector_fields():
    vector = unit_vector(768)
    fields = embedding_fields(vector)
    assert fields["encoding"] == EMBEDDING_ENCODING == "32FC1"
    assert (fields["height"], fields["width"], fields["step"], fields["is_bigendian"]) == (1, 768, 768 * 4, 0)
    assert fields["data"].dtype == np.uint8 and fields["data"].size == 768 * 4
    # The bytes are little-endian IEEE float32, whatever the host's byte order.
    np.testing.assert_array_equal(np.frombuffer(fields["data"].tobytes(), "<f4"), vector)


def test_tokens_fields_one_row_per_token():
    tokens = np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32)
    fields = embedding_fields(tokens)
    assert (fields["height"], fields["width"], fields["step"]) == (64, 32, 128)
    np.testing.assert_array_equal(np.frombuffer(fields["data"].tobytes(), "<f4").reshape(64, 32), tokens)


def test_float64_input_is_stored_as_float32():
    vector = np.linspace(-1, 1, 10)
    decoded = np.frombuffer(embedding_fields(vector)["data"].tobytes(), "<f4")
    np.testing.assert_array_equal(decoded, vector.astype(np.float32))


@pytest.mark.parametrize("shape", [(), (0,), (2, 0), (2, 3, 4)])
def test_rejects_shapes_that_are_not_vectors_or_matrices(shape):
    with pytest.raises(ValueError, match="1-D vector or 2-D array"):
        embedding_fields(np.zeros(shape, np.float32))


def test_round_trip_through_a_real_message_and_cdr(store):
    vector = unit_vector(64, seed=2)
    header = camera_header(store)
    image_type = store.types["sensor_msgs/msg/Image"]
    msg = image_type(header=header, **embedding_fields(vector))
    # Through the wire format and back, as a recorded bag would carry it.
    decoded_msg = store.deserialize_cdr(store.serialize_cdr(msg, image_type.__msgtype__), image_type.__msgtype__)
    assert decoded_msg.header.stamp.sec == 1700000000 and decoded_msg.header.stamp.nanosec == 123456789
    assert decoded_msg.header.frame_id == "front_camera_optical"
    decoded = embedding_from_message(decoded_msg)
    assert decoded.shape == (1, 64) and decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded[0], vector)
    assert abs(np.linalg.norm(decoded) - 1.0) < 1e-6


def test_decodes_big_endian_and_padded_rows(store):
    tokens = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    rows = tokens.astype(">f4").view(np.uint8).reshape(3, 16)
    padded = np.concatenate([rows, np.full((3, 8), 0xEE, np.uint8)], axis=1).reshape(-1)
    msg = store.types["sensor_msgs/msg/Image"](header=camera_header(store), height=3, width=4, encoding="32FC1",
                                               is_bigendian=1, step=24, data=padded)
    np.testing.assert_array_equal(embedding_from_message(msg), tokens)


def test_decodes_rclpy_style_bytes(store):
    vector = unit_vector(16, seed=3)
    msg = store.types["sensor_msgs/msg/Image"](header=camera_header(store), **embedding_fields(vector))
    msg.data = msg.data.tobytes()
    np.testing.assert_array_equal(embedding_from_message(msg)[0], vector)


def test_decode_rejects_wrong_encoding_and_short_data(store):
    msg = store.types["sensor_msgs/msg/Image"](header=camera_header(store), **embedding_fields(unit_vector(8)))
    msg.data = msg.data[:-4]
    with pytest.raises(ValueError, match="shorter than step"):
        embedding_from_message(msg)
    msg.encoding = "rgb8"
    with pytest.raises(ValueError, match="32FC1"):
        embedding_from_message(msg)
