"""Encoding bags on a Ray cluster: one encoder per worker, opened once, bags handed out as workers come free.

Each worker is a Ray actor holding its own :class:`SiglipEncoder` (ONNX Runtime on ``threads`` threads, 1 by
default so N workers use N cores); the driver sends it one bag path at a time and writes the rows it returns, one
commit per bag, into the index (only the driver writes). The rows are made by the same function as in-process
(:func:`rk_siglip_ros.fleet.indexing.encode_one`), so they are the same. Workers read the bags and the shard set
from the paths the driver gives: on a cluster of several machines those must be on a shared file system.

Where the cluster comes from (``--ray``):

- ``local``: a private cluster of this machine's CPUs, started here and stopped at the end; it talks over 127.0.0.1
  only (see :func:`start_local_cluster`);
- ``auto``: the cluster this machine belongs to (``RAY_ADDRESS``, or one started with ``ray start``), else a
  private one as ``local``;
- an address (``HOST:6379``, ``ray://HOST:10001``): that cluster.

A process that already called ``ray.init`` is used as it is and left running.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rk_siglip_ros.errors import RunFailedError, one_line
from rk_siglip_ros.fleet import FleetError

if TYPE_CHECKING:
    from rk_siglip_ros.fleet.indexing import EncodedBag, EncoderOptions
    from rk_siglip_ros.fleet.rows import Sampling
    from rk_siglip_ros.manifest import Manifest
    from rk_siglip_ros.model_identity import ModelIdentity

# A local cluster: no usage reports, and Ray's "this is a one-machine cluster" mode, in which every Ray process
# listens on and talks to 127.0.0.1 instead of the machine's network address (read when ray is imported).
LOCAL_CLUSTER_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
WORKER_THREADS = 1


def start_local_cluster(num_cpus: int | None = None) -> None:
    """ray.init of a private cluster on 127.0.0.1, no dashboard. Sets :data:`LOCAL_CLUSTER_ENV` first: it must run
    before anything in this process imported ray, or Ray keeps the machine's network address (FleetError)."""
    if "ray" in sys.modules:
        from ray._private import ray_constants

        if ray_constants.ENABLE_RAY_CLUSTER:
            raise FleetError("ray was imported before the local cluster was set up, so it would listen on the "
                             "network: start it with rk_siglip_ros.fleet.distributed.start_local_cluster before "
                             "importing ray, or set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0")
    os.environ.update(LOCAL_CLUSTER_ENV)
    import ray

    with warnings.catch_warnings():
        # ray.init starts its processes with subprocess (fork, then exec at once): lancedb's warning about state
        # shared across a fork does not apply to a child that execs.
        warnings.filterwarnings("ignore", message="lancedb fork support", category=RuntimeWarning)
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, configure_logging=False)


def existing_cluster() -> bool:
    """Whether ``ray.init(address="auto")`` would find a cluster: RAY_ADDRESS, or the file ``ray start`` leaves
    (checked without importing ray, whose import fixes which address a private cluster would use)."""
    return bool(os.environ.get("RAY_ADDRESS")) or (Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster").exists()


@contextmanager
def ray_session(address: str) -> Iterator[Any]:
    """The ray module, connected as ``address`` says (module docstring); disconnects (and stops a cluster it
    started) at the end."""
    if not address:
        raise FleetError("--ray needs local, auto or a cluster address")
    if importlib.util.find_spec("ray") is None:
        raise FleetError("--ray needs ray: pip install 'rk_siglip_ros[fleet]'")
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        yield sys.modules["ray"]  # the caller's own session: used as it is, left running
        return
    if address == "auto":
        address = "auto" if existing_cluster() else "local"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address == "local":
        start_local_cluster()
    else:
        import ray

        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise FleetError(f"--ray {address}: no Ray cluster to connect to there ({one_line(error)}); start one "
                             "with `ray start --head`, or use --ray local") from None
    import ray

    try:
        yield ray
    finally:
        ray.shutdown()


class BagEncoderWorker:
    """What runs inside one Ray actor: an encoder opened once, then one bag at a time."""

    def __init__(self, shards: str, options: EncoderOptions, identity: ModelIdentity, sampling: Sampling) -> None:
        from rk_siglip_ros.manifest import load_manifest
        from rk_siglip_ros.runtime.encoder import SiglipEncoder

        threads = options.threads or WORKER_THREADS
        self._encoder = SiglipEncoder.open(load_manifest(shards, verify=()), backend=options.backend,
                                           mode=options.mode, cores=options.cores, threads=threads)
        self._identity, self._sampling = identity, sampling

    def rows(self, path: str, digest: str) -> Any:
        from rk_siglip_ros.fleet.indexing import encode_one

        return encode_one(path, digest, self._encoder, self._identity, self._sampling)

    def close(self) -> None:
        self._encoder.close()


def encode_on_ray(todo: list[tuple[str, str]], manifest: Manifest, identity: ModelIdentity, sampling: Sampling,
                  options: EncoderOptions, address: str, workers: int | None = None) -> Iterator[EncodedBag]:
    """(path, fingerprint, rows or why not) of each bag as Ray workers finish them (not in the order given)."""
    with ray_session(address) as ray:
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        count = min(count, len(todo))
        actor = ray.remote(num_cpus=1)(BagEncoderWorker)
        pool = [actor.remote(str(manifest.root), options, identity, sampling) for _ in range(count)]
        waiting = list(reversed(todo))
        running: dict[Any, tuple[Any, str, str]] = {}
        try:
            for worker in pool:
                if waiting:
                    path, digest = waiting.pop()
                    running[worker.rows.remote(path, digest)] = (worker, path, digest)
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                worker, path, digest = running.pop(ready[0])
                yield path, digest, _result(ray, ready[0])
                if waiting:
                    path, digest = waiting.pop()
                    running[worker.rows.remote(path, digest)] = (worker, path, digest)
        finally:
            for worker in pool:
                ray.kill(worker)


def _result(ray: Any, reference: Any) -> Any:
    try:
        return ray.get(reference)
    except ray.exceptions.RayActorError as error:  # the worker died (its encoder did not open, or it was killed)
        raise RunFailedError(f"a Ray worker died: {one_line(error)}") from None
