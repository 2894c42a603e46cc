"""Which model produced an embedding: the identity a consumer checks before comparing embeddings.

Embeddings are comparable when the same checkpoint produced them (same architecture and width): two shard sets of
one checkpoint (another profile, another machine) give the same embeddings up to the NPU's fp16 rounding. The
manifest's content hash names the exact shard set on top, for provenance.
"""

from __future__ import annotations

from dataclasses import dataclass

from rk_siglip_ros.errors import UserError
from rk_siglip_ros.manifest import Manifest, manifest_sha256

INT32_MAX = 2**31 - 1


class ModelMismatchError(UserError, ValueError):
    """Embeddings (or an index, a text query) from two different models were to be compared."""


@dataclass(frozen=True)
class ModelIdentity:
    checkpoint: str  # the builder's model source: a hub id, a checkpoint folder, or random:<preset>
    architecture: str  # siglip | smolvlm
    embedding_dim: int
    manifest_sha256: str  # the shard set's content hash (manifest.manifest_sha256)

    @classmethod
    def of(cls, manifest: Manifest) -> ModelIdentity:
        return cls(checkpoint=manifest.model.source, architecture=manifest.model.architecture,
                   embedding_dim=manifest.model.embedding_dim, manifest_sha256=manifest_sha256(manifest))

    @property
    def database_version(self) -> int:
        """A non-zero int32 from the content hash (vision_msgs/VisionInfo's database_version)."""
        return int(self.manifest_sha256[:8], 16) % INT32_MAX + 1

    @property
    def method(self) -> str:
        """One line naming checkpoint and shard set: ``<checkpoint> manifest-sha256:<hash>``."""
        return f"{self.checkpoint} manifest-sha256:{self.manifest_sha256}"

    def same_model(self, other: ModelIdentity) -> bool:
        return (self.checkpoint, self.architecture, self.embedding_dim) == (
            other.checkpoint, other.architecture, other.embedding_dim)

    def describe(self) -> str:
        return f"{self.checkpoint} ({self.architecture}, {self.embedding_dim}-d, shard set {self.manifest_sha256[:12]})"


def check_same_model(expected: ModelIdentity, found: ModelIdentity, what: str) -> None:
    """ModelMismatchError unless ``found`` (described by ``what``, e.g. "the bag's embeddings") comes from the model
    of ``expected`` (the shard set in use)."""
    if not expected.same_model(found):
        raise ModelMismatchError(f"{what} come from {found.describe()}, not from the shard set's model "
                                 f"{expected.describe()}: embeddings of different models cannot be compared; use "
                                 f"the shard set built from {found.checkpoint}")
