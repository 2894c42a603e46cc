"""The fleet index: index_bags and search_index on real rosbag2 files, the tiny SigLIP checkpoint's shard set, real
LanceDB, real ONNX Runtime, and a real local Ray cluster (2 CPUs, 127.0.0.1 only), shared by the Ray tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from rosbags.rosbag2 import StoragePlugin, Writer
from test_search_bag import STORE, header, photo

pytest.importorskip("lancedb")

from rk_siglip_ros.bag.io import open_bag  # noqa: E402
from rk_siglip_ros.bag.search import TILE, rank, read_embeddings, sheet_layout  # noqa: E402
from rk_siglip_ros.fleet.indexing import index_bags  # noqa: E402
from rk_siglip_ros.fleet.rows import Sampling  # noqa: E402
from rk_siglip_ros.fleet.schema import STATE_WRITING  # noqa: E402
from rk_siglip_ros.fleet.search import Filters, nearest  # noqa: E402
from rk_siglip_ros.fleet.store import FleetIndex  # noqa: E402
from rk_siglip_ros.manifest import load_manifest  # noqa: E402
from rk_siglip_ros.text import TextEncoder  # noqa: E402

BAG_PHOTOS = {"a": ("astronaut", "coffee", "chelsea"), "b": ("rocket", "camera", "hubble_deep_field"),
              "c": ("coins", "moon", "horse")}
QUERIES = ["an astronaut in a suit", "a ginger cat", "a rocket"]
COLUMNS = ["bag_path", "bag_fingerprint", "topic", "stamp_ns", "frame_id", "msg_index", "log_time_ns", "thumbnail",
           "checkpoint", "manifest_sha256", "vector"]


def write_camera_bag(path: Path, names: tuple[str, ...], first: int, compressed: bool = False,
                     repeat: int = 1) -> Path:
    """One camera (raw rgb8, or JPEG), one frame per photo name (``repeat`` times over), stamps 1 s apart."""
    topic, msgtype = (("/cam1/image_raw/compressed", "sensor_msgs/msg/CompressedImage") if compressed
                      else ("/cam0/image_raw", "sensor_msgs/msg/Image"))
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection(topic, msgtype, typestore=STORE)
        for index in range(len(names) * repeat):
            rgb = photo(names[index % len(names)])
            stamp = first + index
            if compressed:
                ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
                message = STORE.types[msgtype](header=header(stamp, "cam1"), format="jpeg", data=data.reshape(-1))
            else:
                message = STORE.types[msgtype](header=header(stamp, "cam0"), height=72, width=96, encoding="rgb8",
                                               is_bigendian=0, step=288, data=rgb.reshape(-1).copy())
            writer.write(connection, 10**18 + stamp, STORE.serialize_cdr(message, msgtype))
    return path


def run(tool: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    code = f"import sys; from rk_siglip_ros.cli.{tool} import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fleet-bags")
    return {"a": write_camera_bag(root / "a", BAG_PHOTOS["a"], 0),
            "b": write_camera_bag(root / "b", BAG_PHOTOS["b"], 3, compressed=True),
            "c": write_camera_bag(root / "c", BAG_PHOTOS["c"], 6)}


@pytest.fixture(scope="module")
def two_bag_index(bags, tiny_text_shards, tmp_path_factory) -> Path:
    """Bags a and b indexed in-process through the CLI."""
    index = tmp_path_factory.mktemp("fleet-index") / "fleet.lance"
    done = run("index_bags", str(index), str(bags["a"]), str(bags["b"]), "--shards", str(tiny_text_shards),
               "--backend", "onnxruntime", "--no-progress")
    assert done.returncode == 0, done.stderr
    return index


def table_rows(index: Path) -> list[tuple]:
    """Every frame row, sorted, vectors as bytes: what two indexes must agree on."""
    table = FleetIndex.open_for_reading(str(index)).frames.to_arrow()
    columns = {name: table[name].to_pylist() for name in COLUMNS}
    columns["vector"] = [np.asarray(v, np.float32).tobytes() for v in columns["vector"]]
    return sorted(zip(*(columns[name] for name in COLUMNS), strict=True))


def keys(rows: list[tuple]) -> list[tuple]:
    return [(row[1], row[2], row[5]) for row in rows]  # fingerprint, topic, message index


def test_index_two_bags_then_again_adds_nothing(two_bag_index, bags, tiny_text_shards):
    rows = table_rows(two_bag_index)
    assert len(rows) == 6 and len(set(keys(rows))) == 6
    assert {row[0] for row in rows} == {str(bags["a"]), str(bags["b"])}
    assert all(row[7][:2] == b"\xff\xd8" for row in rows)  # every row has a JPEG thumbnail
    index = FleetIndex.open_for_reading(str(two_bag_index))
    assert index.identity.checkpoint == load_manifest(tiny_text_shards, verify=()).model.source
    version = index.frames.version
    done = run("index_bags", str(two_bag_index), str(bags["a"]), str(bags["b"]), "--shards", str(tiny_text_shards),
               "--backend", "onnxruntime", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("already indexed") == 2 and "0 bag(s) indexed" in done.stdout
    assert table_rows(two_bag_index) == rows
    assert FleetIndex.open_for_reading(str(two_bag_index)).frames.version == version  # not even a commit


def test_third_bag_is_added_and_search_equals_search_bag(two_bag_index, bags, tiny_text_shards, tmp_path):
    index_path = tmp_path / "fleet.lance"
    done = run("index_bags", str(index_path), str(bags["a"]), str(bags["b"]), "--shards", str(tiny_text_shards),
               "--backend", "onnxruntime", "--no-progress")
    assert done.returncode == 0, done.stderr
    # The third bag goes in as encode_bag wrote it: its embeddings are taken, not encoded again.
    encoded = tmp_path / "c_emb"
    done = run("encode_bag", str(bags["c"]), str(encoded), "--shards", str(tiny_text_shards), "--backend",
               "onnxruntime", "--no-progress")
    assert done.returncode == 0, done.stderr
    done = run("index_bags", str(index_path), str(bags["a"]), str(bags["b"]), str(encoded), "--shards",
               str(tiny_text_shards), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "1 bag(s) indexed, 2 already there" in done.stdout
    index = FleetIndex.open_for_reading(str(index_path))
    assert index.count_rows() == 9
    assert dict(zip(*(index.bags.to_arrow()[c].to_pylist() for c in ("bag_path", "source")), strict=True))[
        str(encoded)] == "embeddings"

    # search_bag's own reading and ranking of each bag's embeddings (bags a and b through encode_bag too).
    with TextEncoder.open(tiny_text_shards) as text:
        label_set = text.label_set(QUERIES)
    expected: list[list[tuple[str, int, float]]] = [[] for _ in QUERIES]
    for name, path in (("a", bags["a"]), ("b", bags["b"]), ("c", bags["c"])):
        out = encoded if name == "c" else tmp_path / f"{name}_emb"
        if name != "c":
            assert run("encode_bag", str(path), str(out), "--shards", str(tiny_text_shards), "--backend",
                       "onnxruntime", "--no-progress").returncode == 0
        with open_bag(out) as bag:
            ranked = rank(read_embeddings(bag), label_set, 9)
        for column, hits in enumerate(ranked):
            expected[column] += [(hit.frame.topic, hit.frame.sec * 10**9 + hit.frame.nanosec, hit.probability)
                                 for hit in hits]
    for column in range(len(QUERIES)):
        best = sorted(expected[column], key=lambda item: -item[2])[:5]
        found = nearest(index, label_set.embeddings[column],
                        lambda rows, c=column: label_set.probabilities(rows).reshape(len(rows), -1)[:, c], 5)
        assert [(hit.topic, hit.stamp_ns) for hit in found] == [(topic, stamp) for topic, stamp, _ in best]
        assert np.allclose([hit.score for hit in found], [p for *_, p in best], rtol=0, atol=1e-6)
    # Filters narrow before ranking: only bag b's topic, only stamps from 4 on.
    found = nearest(index, label_set.embeddings[0], lambda rows: label_set.probabilities(rows)[:, 0], 9,
                    Filters(topics=("/cam1/image_raw/compressed",), since_ns=(1_700_000_000 + 4) * 10**9))
    assert len(found) == 2 and {hit.topic for hit in found} == {"/cam1/image_raw/compressed"}

    # The CLI prints the same top frame as the library for the first query.
    done = run("search_index", str(index_path), QUERIES[0], "--top", "3")
    assert done.returncode == 0, done.stderr
    top = nearest(index, label_set.embeddings[0], lambda rows: label_set.probabilities(rows)[:, 0], 1)[0]
    first = next(line for line in done.stdout.splitlines() if line.strip().startswith("1 "))
    assert top.bag_path in first and top.stamp in first


def test_contact_sheet_comes_from_thumbnails_without_the_bags(bags, tiny_text_shards, tmp_path):
    copy = write_camera_bag(tmp_path / "gone", BAG_PHOTOS["a"], 0)
    index = tmp_path / "fleet.lance"
    assert run("index_bags", str(index), str(copy), "--shards", str(tiny_text_shards), "--no-progress"
               ).returncode == 0
    for file in copy.iterdir():
        file.unlink()
    copy.rmdir()
    sheet = tmp_path / "sheet.png"
    done = run("search_index", str(index), "an astronaut", "--top", "3", "--sheet", str(sheet))
    assert done.returncode == 0, done.stderr
    assert f"contact sheet: {sheet} (3 frames" in done.stdout
    image = np.asarray(Image.open(sheet).convert("RGB")).astype(np.float32)
    layout = sheet_layout(1, 3)
    assert image.shape[:2] == (layout.size[1], layout.size[0])
    table = [line.split() for line in done.stdout.splitlines() if line.startswith("  ")]
    stamps = [fields[3] for fields in table if fields[0].isdigit()]
    for column, stamp in enumerate(stamps):
        left, top, right, bottom = layout.tiles[column]
        shown = BAG_PHOTOS["a"][int(stamp.split(".")[0]) - 1_700_000_000]
        expected = np.asarray(Image.fromarray(photo(shown)).resize(TILE)).astype(np.float32)
        others = [np.abs(image[top:bottom, left:right] - np.asarray(Image.fromarray(photo(n)).resize(TILE))).mean()
                  for n in BAG_PHOTOS["a"] if n != shown]
        assert np.abs(image[top:bottom, left:right] - expected).mean() < min(others)


def test_an_image_query_finds_its_own_frame(two_bag_index, tmp_path):
    query = tmp_path / "chelsea.png"
    Image.fromarray(photo("chelsea")).save(query)  # bag a holds these very pixels, raw rgb8, at stamp 2
    done = run("search_index", str(two_bag_index), "--image", str(query), "--top", "2")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("  ") and line.split()[0].isdigit()]
    assert rows[0][3] == "1700000002.000002000" and float(rows[0][-1]) > 0.9999
    assert float(rows[1][-1]) < float(rows[0][-1])
    assert f"query '{query}':" in done.stdout and "cosine" in done.stdout


def test_another_models_index_is_refused(two_bag_index, bags, shard_factory, tmp_path):
    other = shard_factory("random:tiny")
    for tool, arguments in (("search_index", [str(two_bag_index), "a cat", "--shards", str(other)]),
                            ("index_bags", [str(two_bag_index), str(bags["c"]), "--shards", str(other),
                                            "--no-progress"])):
        done = run(tool, *arguments)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith(f"{tool}: error: ") and "random:tiny" in lines[0] and "holds" in lines[0]
    assert FleetIndex.open_for_reading(str(two_bag_index)).count_rows() == 6


def test_bad_input_is_one_line_per_bag_and_the_rest_is_indexed(bags, tiny_text_shards, tmp_path):
    corrupt = tmp_path / "corrupt.mcap"
    data = next(bags["a"].glob("*.mcap")).read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    not_a_bag = tmp_path / "notes"
    not_a_bag.mkdir()
    (not_a_bag / "readme.txt").write_text("not a bag")
    index = tmp_path / "fleet.lance"
    done = run("index_bags", str(index), str(corrupt), str(bags["a"]), str(not_a_bag), str(tmp_path / "missing"),
               "--shards", str(tiny_text_shards), "--no-progress")
    assert done.returncode == 2, done.stderr
    for path in (corrupt, not_a_bag, tmp_path / "missing"):
        lines = [line for line in done.stdout.splitlines() if line.startswith(f"{path}: failed")]
        assert len(lines) == 1, done.stdout
    assert f"{bags['a']}: indexed 3 frame(s)" in done.stdout
    assert FleetIndex.open_for_reading(str(index)).count_rows() == 3
    # An index that cannot be written: one line, nothing else happens.
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = run("index_bags", str(blocker / "fleet.lance"), str(bags["a"]), "--shards", str(tiny_text_shards))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "cannot write the index" in done.stderr


def test_a_bag_left_half_written_is_redone_whole(bags, tiny_text_shards, tmp_path):
    """A run killed between a bag's rows and its done marker: the next run removes them and indexes it again."""
    index_path = tmp_path / "fleet.lance"
    summary = index_bags(str(index_path), [bags["a"]], load_manifest(tiny_text_shards, verify=()))
    complete = table_rows(index_path)
    index = FleetIndex.open_for_writing(str(index_path), index_path_identity(index_path), str(tiny_text_shards))
    fingerprint = complete[0][1]
    index.bags.update(where=f"bag_fingerprint = '{fingerprint}'", values={"state": STATE_WRITING})
    index.frames.delete(f"bag_fingerprint = '{fingerprint}' AND msg_index > 0")  # as if cut short
    summary = index_bags(str(index_path), [bags["a"], bags["b"]], load_manifest(tiny_text_shards, verify=()))
    assert summary.recovered == [str(bags["a"])]
    rows = table_rows(index_path)
    assert len(rows) == 6 and len(set(keys(rows))) == 6
    assert [row for row in rows if row[1] == fingerprint] == complete


def index_path_identity(index_path: Path):
    return FleetIndex.open_for_reading(str(index_path)).identity


def test_killed_mid_bag_then_resumed(bags, tiny_text_shards, tmp_path):
    big = write_camera_bag(tmp_path / "big", BAG_PHOTOS["b"], 100, repeat=150)  # 450 frames: seconds to encode
    index_path = tmp_path / "fleet.lance"
    code = "import sys; from rk_siglip_ros.cli.index_bags import main; sys.exit(main())"
    process = subprocess.Popen([sys.executable, "-c", code, str(index_path), str(bags["a"]), str(big), "--shards",
                                str(tiny_text_shards), "--no-progress", "--threads", "1", "--cores", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if FleetIndex.open_for_reading(str(index_path)).done_bags():
                break
        except Exception:  # noqa: BLE001 - the index is not there yet
            pass
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "index_bags finished before it could be killed mid-bag"
    index = FleetIndex.open_for_reading(str(index_path))
    assert set(index.done_bags().values()) == {str(bags["a"])} and index.count_rows() == 3
    done = run("index_bags", str(index_path), str(bags["a"]), str(big), "--shards", str(tiny_text_shards),
               "--no-progress")
    assert done.returncode == 0, done.stderr
    rows = table_rows(index_path)
    assert len(rows) == 453 and len(set(keys(rows))) == 453


# ------------------------------------------------------------------------------------------------ Ray


def test_index_bags_ray_local_equals_in_process(two_bag_index, bags, tiny_text_shards, tmp_path):
    """The CLI's own private cluster (started before anything imports ray, so it stays on 127.0.0.1)."""
    index = tmp_path / "ray.lance"
    done = run("index_bags", str(index), str(bags["a"]), str(bags["b"]), "--shards", str(tiny_text_shards),
               "--backend", "onnxruntime", "--ray", "local", "--ray-workers", "2", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert table_rows(index) == table_rows(two_bag_index)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster (2 CPUs, 127.0.0.1) for the module's Ray tests, stopped with no process left."""
    import psutil

    from rk_siglip_ros.fleet.distributed import start_local_cluster

    start_local_cluster(num_cpus=2)
    import ray

    yield ray
    children = psutil.Process().children(recursive=True)
    ray.shutdown()
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"Ray left processes behind: {[p.pid for p in alive]}"


def test_ray_index_equals_in_process_index(ray_cluster, bags, tiny_text_shards, tmp_path):
    import psutil

    in_process = tmp_path / "in_process.lance"
    on_ray = tmp_path / "ray.lance"
    manifest = load_manifest(tiny_text_shards, verify=())
    every = Sampling(every_s=1.5)  # frames 0 and 2 of each bag
    index_bags(str(in_process), [bags["a"], bags["b"], bags["c"]], manifest, every)
    summary = index_bags(str(on_ray), [bags["a"], bags["b"], bags["c"]], manifest, every, ray="local")
    assert summary.count("indexed") == 3
    rows = table_rows(on_ray)
    assert len(rows) == 6 and rows == table_rows(in_process)
    # Every connection of every Ray process stays on 127.0.0.1.
    addresses = set()
    for process in psutil.Process().children(recursive=True) + [psutil.Process()]:
        try:
            for connection in process.net_connections(kind="inet"):
                addresses |= {end.ip for end in (connection.laddr, connection.raddr) if end}
        except psutil.NoSuchProcess:
            continue
    assert addresses and addresses <= {"127.0.0.1", "::ffff:127.0.0.1"}, addresses


@pytest.mark.parametrize("tool, words", [
    ("index_bags", ["--ray", "--every", "LanceDB", "fingerprint", "thumbnail", "IVF-PQ", "exit status"]),
    ("search_index", ["--sheet", "--since", "--topic", "--bag", "--image", "search_bag", "exit status"]),
])
def test_help_explains(tool, words):
    done = run(tool, "--help")
    assert done.returncode == 0
    for word in words:
        assert word in done.stdout, word
