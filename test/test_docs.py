"""The docs against the code: the README's parameter and launch-argument tables against the node's declarations, every
command in a ```bash block against what exists (console scripts and their options, make targets, launch arguments,
parameters), and every relative link against the files and headings it points to."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from rk_siglip_ros.node import config as node_config
from rk_siglip_ros.node import dds
from rk_siglip_ros.node.config import NODE_NAME, PACKAGE, PARAMETERS

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "RESULTS.md"]
LAUNCH_FILE = REPO / "launch" / "encoder.launch.py"
# Commands a doc may show that are not this project's: their arguments are not checked.
OTHER_COMMANDS = {"cd", "cp", "git", "pip", "rosdep", "colcon", "source", "sudo", "echo", "export", "tee", "touch",
                  "python", "python3", "mcap"}
# `ros2 topic ...` subcommands that name a topic right after them.
TOPIC_VERBS = {"echo", "hz", "info", "bw"}


# ------------------------------------------------------------------------------------------------ what the code has

def console_scripts() -> dict[str, str]:
    """setup.py's console scripts: name -> "module:function"."""
    tree = ast.parse((REPO / "setup.py").read_text())
    entries = [node for node in ast.walk(tree) if isinstance(node, ast.JoinedStr | ast.Constant)
               and "=" in _text(node) and ":main" in _text(node)]
    scripts = {}
    for entry in entries:
        name, target = (part.strip() for part in _text(entry).split("=", 1))
        scripts[name] = target.replace("{PACKAGE}", PACKAGE)
    return scripts


def _text(node: ast.AST) -> str:
    """A string constant or an f-string's text with each placeholder written as {NAME}."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    parts = [value.value if isinstance(value, ast.Constant) else "{" + ast.unparse(value.value) + "}"
             for value in node.values]  # type: ignore[attr-defined]
    return "".join(str(part) for part in parts)


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.M))


def launch_arguments() -> dict[str, object]:
    """encoder.launch.py's DeclareLaunchArgument names -> default (a constant, a resolved module constant, or ...)."""
    arguments: dict[str, object] = {}
    for call in ast.walk(ast.parse(LAUNCH_FILE.read_text())):
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "DeclareLaunchArgument":
            default = next((keyword.value for keyword in call.keywords if keyword.arg == "default_value"), None)
            if isinstance(default, ast.Constant):
                value: object = default.value
            elif isinstance(default, ast.Name):
                value = getattr(dds, default.id, getattr(node_config, default.id, ...))
            else:
                value = ...  # computed at launch time (an install path): not compared
            arguments[call.args[0].value] = value
    return arguments


@cache
def script_help(name: str) -> str:
    module, function = console_scripts()[name].split(":")
    code = f"import sys; sys.argv = [{name!r}, '--help']; from {module} import {function}; sys.exit({function}())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{name} --help failed: {done.stderr[-2000:]}"
    return done.stdout


# ------------------------------------------------------------------------------------------------ what the docs say

def section(text: str, heading: str) -> str:
    """The text under a `## heading` up to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    body = text.split(f"\n{heading}\n", 1)[1]
    match = re.search(rf"^#{{1,{len(level)}}} ", body, flags=re.M)
    return body[:match.start()] if match else body


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """The body rows of the markdown table whose header row starts with ``header_start``, as lists of cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        rows.append([cell.strip() for cell in cells])
    return rows


def code_text(cell: str) -> str | None:
    """The text of a cell that is exactly one `code span`, else None."""
    match = re.fullmatch(r"`([^`]*)`", cell)
    return match.group(1) if match else None


def parse_default(text: str) -> object:
    return YAML(typ="safe").load(text)


def bash_commands(markdown: str) -> list[list[str]]:
    """Every simple command in the ```bash blocks: continuation lines joined, comments dropped, split at && | ;."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            command: list[str] = []
            for token in lexer:
                if token in ("&&", "||", "|", ";", "&"):
                    commands.append(command)
                    command = []
                else:
                    command.append(token)
            commands.append(command)
    return [command for command in commands if command]


# ------------------------------------------------------------------------------------------------ the checks

def command_problems(command: list[str]) -> list[str]:
    """What in one documented command does not exist; [] when everything it names does."""
    while command and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", command[0]):
        command = command[1:]  # VAR=value prefixes
    if not command:
        return []
    program = command[0].removeprefix(".venv/bin/")
    scripts = console_scripts()
    shown = " ".join(command)
    if program in scripts:
        if program == "encoder_node":
            return []  # a ROS node: its options are ROS arguments
        known = set(re.findall(r"--[\w-]+", script_help(program)))
        return [f"{shown}: {program} has no option {option}" for option in command[1:]
                if option.startswith("--") and option.split("=", 1)[0] not in known]
    if program == "make":
        targets = make_targets()
        return [f"{shown}: no make target {target}" for target in command[1:]
                if not target.startswith("-") and "=" not in target and target not in targets]
    if program == "ros2":
        return ros2_problems(command, shown)
    if program in OTHER_COMMANDS:
        return []
    return [f"{shown}: {program} is neither a console script of setup.py nor a known command"]


def ros2_problems(command: list[str], shown: str) -> list[str]:
    verb, arguments = (command[1], command[2:]) if len(command) > 1 else ("", [])
    if verb == "launch":
        if arguments[:2] != [PACKAGE, LAUNCH_FILE.name]:
            return [f"{shown}: the launch file is `ros2 launch {PACKAGE} {LAUNCH_FILE.name}`"]
        declared = launch_arguments()
        return [f"{shown}: {LAUNCH_FILE.name} declares no argument {argument.split(':=')[0]!r}"
                for argument in arguments[2:] if argument.split(":=", 1)[0] not in declared]
    if verb == "run":
        return [] if arguments[:1] == [PACKAGE] and arguments[1:2] and arguments[1] in console_scripts() else \
            [f"{shown}: not a console script of {PACKAGE}"]
    if verb == "param":
        action, node, name = (arguments + ["", "", ""])[:3]
        problems = []
        if node != f"/{NODE_NAME}":
            problems.append(f"{shown}: the node is /{NODE_NAME}")
        if name not in PARAMETERS:
            problems.append(f"{shown}: the node has no parameter {name!r}")
        elif action == "set" and PARAMETERS[name].read_only:
            problems.append(f"{shown}: {name} is read-only after start")
        return problems
    if verb == "topic" and arguments[:1] and arguments[0] in TOPIC_VERBS and len(arguments) > 1:
        topic = arguments[1]
        # The node's topics are relative: with no namespace they resolve to /siglip/...
        ours = {"/" + spec.default.lstrip("/") for name, spec in PARAMETERS.items() if name.endswith("_topic")} | {
            "/siglip/vision_info", "/diagnostics"}
        if topic.startswith("/siglip") and topic not in ours:
            return [f"{shown}: the node publishes no {topic}"]
    return []


def test_readme_parameter_table_is_the_code_parameter_table():
    """Names (in the code's order), defaults and run-time changeability, both ways; other rows are topics."""
    readme = README.read_text()
    rows = table_rows(section(readme, "## The node: topics and parameters"), "| Parameter / topic |")
    documented = {}
    for name_cell, default_cell, runtime_cell, *_ in rows:
        name = code_text(name_cell)
        assert name is not None, f"first cell must be one `name`: {name_cell!r}"
        if name.startswith("/"):
            continue  # a topic the node publishes without a parameter of its own
        documented[name] = (default_cell, runtime_cell)
    assert list(documented) == list(PARAMETERS)
    for name, (default_cell, runtime_cell) in documented.items():
        spec = PARAMETERS[name]
        default_text = code_text(default_cell)
        assert default_text is not None, f"{name}: default must be one `value`: {default_cell!r}"
        default = parse_default(default_text)
        assert default == spec.default and type(default) is type(spec.default), (name, default, spec.default)
        assert runtime_cell == ("no" if spec.read_only else "yes"), (name, runtime_cell)


def test_readme_launch_argument_table_is_the_launch_file():
    """Names both ways; a default the launch file states as a value is the one documented."""
    rows = table_rows(README.read_text(), "| Argument |")
    documented = {code_text(row[0]): row[1] for row in rows}
    declared = launch_arguments()
    assert set(documented) == set(declared)
    for name, default in declared.items():
        if default is not ...:
            assert code_text(documented[name]) == (default or '""'), (name, documented[name], default)


def test_every_readme_command_exists():
    commands = bash_commands(README.read_text())
    assert any(command[0] == "ros2" for command in commands) and any(command[0] == "make" for command in commands)
    assert [problem for command in commands for problem in command_problems(command)] == []


def test_every_docs_command_exists():
    problems = [f"{doc.relative_to(REPO)}: {problem}" for doc in DOCS[1:]
                for command in bash_commands(doc.read_text()) for problem in command_problems(command)]
    assert problems == []


@pytest.mark.parametrize("command, complaint", [
    ("make dmeo", "no make target dmeo"),
    ("make test lnt", "no make target lnt"),
    ('ros2 launch rk_siglip_ros encoder.launch.py image_topic:="[/a]"', "no argument 'image_topic'"),
    ("ros2 launch rk_siglip_ros encoder.py", "the launch file is"),
    ("ros2 param set /encoder_node label \"['a']\"", "no parameter 'label'"),
    ("ros2 param set /encoder_node mode replicas", "mode is read-only"),
    ("ros2 param get /encoder labels", "the node is /encoder_node"),
    ("ros2 topic echo /siglip/embedding", "publishes no /siglip/embedding"),
    ("encode_bags in out --shards s", "encode_bags is neither"),
    (".venv/bin/encode_text --shard s hello --out t.npy", "has no option --shard"),
    ("ros2 run rk_siglip_ros encoder", "not a console script"),
])
def test_the_command_check_catches_typos(command, complaint):
    parsed = bash_commands(f"```bash\n{command}\n```\n")
    problems = [problem for simple in parsed for problem in command_problems(simple)]
    assert len(problems) == 1 and complaint in problems[0], problems


def test_the_command_check_passes_real_commands():
    block = ("```bash\n"
             "make test && ros2 param set /encoder_node max_rate_hz 2   # a comment: make nothing\n"
             "encode_text --shards s hello --out t.npy\n"
             "ros2 launch rk_siglip_ros encoder.launch.py shards:=/x \\\n      dds_config:=none\n"
             "```\n")
    commands = bash_commands(block)
    assert len(commands) == 4
    assert [problem for command in commands for problem in command_problems(command)] == []


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a markdown file (code blocks left out)."""
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def test_relative_links_point_to_files_and_headings():
    problems = []
    for doc in DOCS:
        text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            if not linked.exists():
                problems.append(f"{doc.relative_to(REPO)}: {target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
                problems.append(f"{doc.relative_to(REPO)}: {target}: no such heading")
    assert problems == []


def test_readme_stays_short():
    assert len(README.read_text().splitlines()) <= 350
