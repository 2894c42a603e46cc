"""ament_python setup for rk_siglip_ros (also a plain pip-installable package off-ROS)."""

from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "rk_siglip_ros"
HERE = Path(__file__).resolve().parent


def requirements(name: str) -> list[str]:
    """The requirement lines of requirements/<name>.txt (comments and -r includes left out)."""
    lines = (HERE / "requirements" / f"{name}.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip() and not line.startswith("-")]


def shard_data_files() -> list[tuple[str, list[str]]]:
    """Every built shard set under shards/<name>/ goes to share/<pkg>/shards/<name>/ (none in a clean checkout)."""
    entries = []
    for shard_dir in sorted(p for p in (HERE / "shards").glob("*") if p.is_dir()):
        files = sorted(str(f.relative_to(HERE)) for f in shard_dir.iterdir() if f.is_file())
        if files:
            entries.append((f"share/{PACKAGE}/shards/{shard_dir.name}", files))
    return entries


def config_files() -> list[str]:
    """config/: the node's parameter defaults (*.yaml) and DDS settings (*.xml, e.g. cyclonedds_large_images.xml)."""
    return [str(p.relative_to(HERE)) for p in sorted((HERE / "config").iterdir()) if p.suffix in (".yaml", ".xml")]


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={f"{PACKAGE}.runtime": ["timing_profiles/*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", [str(p.relative_to(HERE)) for p in sorted((HERE / "launch").glob("*.launch.py"))]),
        (f"share/{PACKAGE}/config", config_files()),
        *shard_data_files(),
    ],
    # install_requires stays minimal on purpose: on a ROS 2 robot numpy/OpenCV/Pillow come from apt (rosdep), which
    # pip's metadata does not see, and setuptools' generated console scripts would refuse to start over "missing"
    # distributions. Off ROS: pip install ".[runtime]" (the encoder, encode_bag, encode_images), ".[build]" (builder),
    # ".[fleet]" (index_bags, search_index: LanceDB, Ray).
    install_requires=["setuptools"],
    extras_require={"runtime": requirements("runtime"), "build": requirements("runtime") + requirements("build"),
                    "fleet": requirements("runtime") + requirements("fleet")},
    zip_safe=True,
    maintainer="rk_siglip_ros maintainers",
    maintainer_email="maintainers@rk-siglip-ros.dev",
    description="SigLIP vision embeddings on the RK3588 NPU for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            f"encoder_node = {PACKAGE}.node.encoder_node:main",
            f"build_shards = {PACKAGE}.cli.build_shards:main",
            f"encode_images = {PACKAGE}.cli.encode_images:main",
            f"encode_bag = {PACKAGE}.cli.encode_bag:main",
            f"encode_text = {PACKAGE}.cli.encode_text:main",
            f"search_bag = {PACKAGE}.cli.search_bag:main",
            f"index_bags = {PACKAGE}.cli.index_bags:main",
            f"search_index = {PACKAGE}.cli.search_index:main",
            f"bench = {PACKAGE}.cli.bench:main",
            f"selfcheck = {PACKAGE}.cli.selfcheck:main",
        ],
    },
)
