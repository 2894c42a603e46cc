"""log_bridge: the library's Python logging forwarded into the node's log (what the node installs at start)."""

import logging

from rk_siglip_ros.node.log_bridge import LIBRARY_LOGGER, forward_library_logs


def test_each_record_reaches_the_sink_of_its_level_once_and_nowhere_else(node_log, capsys):
    logger = logging.getLogger(f"{LIBRARY_LOGGER}.scheduler")
    logger.debug("not shown: below INFO, as the node's default level")
    logger.info("opened")
    logger.warning("slow")
    logger.error("core 1 out of rotation")
    logger.critical("worse")
    assert node_log == {"debug": [], "info": ["opened"], "warn": ["slow"],
                        "error": ["core 1 out of rotation", "worse"]}
    assert capsys.readouterr().err == ""  # no second copy from Python's last-resort stderr handler


def test_a_traceback_comes_with_its_record(node_log):
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger(f"{LIBRARY_LOGGER}.encoder").exception("releasing runners failed")
    (line,) = node_log["error"]
    assert line.startswith("releasing runners failed") and "ValueError: boom" in line


def test_other_loggers_are_left_alone(node_log):
    logging.getLogger("somebody_else").error("not ours")
    assert node_log["error"] == []


def test_undo_restores_pythons_own_handling():
    library = logging.getLogger(LIBRARY_LOGGER)
    before = (library.propagate, library.level, list(library.handlers))
    lines: list[str] = []
    undo = forward_library_logs(lines.append, lines.append, lines.append)
    undo()
    logging.getLogger(f"{LIBRARY_LOGGER}.scheduler").error("after undo")
    assert lines == [] and (library.propagate, library.level, list(library.handlers)) == before
