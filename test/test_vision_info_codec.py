"""The VisionInfo convention (messages/vision_info.py): what the node and encode_bag write reads back as the same
model identity; anything else is refused in one line."""

from __future__ import annotations

import pytest

from rk_siglip_ros.messages.vision_info import (
    POOLED,
    TOKEN_MEAN,
    VisionInfoError,
    parse_vision_info,
    vision_info_fields,
    vision_info_topic,
)
from rk_siglip_ros.model_identity import ModelIdentity

IDENTITY = ModelIdentity(checkpoint="/data/my checkpoints/siglip base", architecture="siglip", embedding_dim=768,
                         manifest_sha256="0123456789abcdef" * 4)


@pytest.mark.parametrize("embedding", [POOLED, TOKEN_MEAN])
def test_fields_read_back_as_the_same_identity(embedding):
    fields = vision_info_fields(IDENTITY, embedding, "/opt/shards/default")
    content = parse_vision_info(**fields)
    assert ModelIdentity(**content.identity_fields()) == IDENTITY  # a checkpoint path with spaces survives
    assert (content.embedding, content.shards, content.embedding_dim) == (embedding, "/opt/shards/default", 768)
    assert content.database_version == IDENTITY.database_version != 0
    assert fields["method"].startswith(IDENTITY.method)


@pytest.mark.parametrize("method", ["", "yolov8 detector", "random:tiny manifest-sha256:abc architecture:siglip "
                                    "embedding_dim:32 embedding:pooled"])
def test_another_publishers_vision_info_is_refused(method):
    with pytest.raises(VisionInfoError, match="published by something else"):
        parse_vision_info(method, "", 1)


def test_a_zero_database_version_is_refused():
    fields = vision_info_fields(IDENTITY, POOLED, "x")
    with pytest.raises(VisionInfoError, match="database_version is 0"):
        parse_vision_info(fields["method"], "x", 0)


@pytest.mark.parametrize(("embeddings", "info"), [("/siglip/embeddings", "/siglip/vision_info"),
                                                  ("siglip/embeddings", "siglip/vision_info"),
                                                  ("/cam0/clip/emb", "/cam0/clip/vision_info"),
                                                  ("/emb", "/vision_info"), ("emb", "vision_info")])
def test_vision_info_topic_sits_beside_the_embeddings(embeddings, info):
    assert vision_info_topic(embeddings) == info
