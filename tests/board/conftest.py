"""The on-board tier: `pytest --board PORT [--board-kind esp32|nrf52840] [--link PORT2] tests/board`.

Every test here executes code on the board through its serial REPL (boardkit.OnBoard). A
test that runs code on the board and passes counts itself; the session ends by printing
`N tests ran on the board`. Without --board the whole tier skips.
"""
from __future__ import annotations

import pytest

from boardkit import NOTES, OnBoard

KINDS = {"esp32": "esp32", "nrf52840": "nrf"}  # --board-kind -> the port's own module
_RAN = pytest.StashKey[set]()
_PASSED = pytest.StashKey[set]()
_BOARD = pytest.StashKey[OnBoard]()


def pytest_configure(config):
    config.stash[_RAN] = set()
    config.stash[_PASSED] = set()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.passed and item.nodeid in item.config.stash[_RAN]:
        item.config.stash[_PASSED].add(item.nodeid)


def pytest_terminal_summary(terminalreporter, config):
    if not config.getoption("--board"):
        return
    ran, passed = config.stash[_RAN], config.stash[_PASSED]
    line = "%d tests ran on the board" % len(passed)
    if len(ran) > len(passed):
        line += " (%d more executed code there and failed)" % (len(ran) - len(passed))
    for note in config.stash.get(NOTES, []):
        terminalreporter.write_line(note)
    terminalreporter.write_line(line)


def _kind(board: OnBoard, asked: str | None) -> str:
    have = [k for k, mod in KINDS.items() if mod in board.facts["modules"]]
    if asked:
        if asked not in have:
            pytest.fail("--board-kind %s: the board on %s has no `%s` module (it has %s)"
                        % (asked, board.port, KINDS[asked], board.facts["modules"] or "neither"), pytrace=False)
        return asked
    if len(have) == 1:
        return have[0]
    for k in have:  # both importable (an emulator): the platform decides
        if board.facts["platform"] == KINDS[k]:
            return k
    pytest.fail("cannot tell what board is on %s (modules %s, sys.platform %r): give --board-kind"
                % (board.port, board.facts["modules"], board.facts["platform"]), pytrace=False)


@pytest.fixture(scope="session")
def board(request):
    """The board at --board PORT, opened once: an OnBoard with `.kind` and `.spec` (board.toml)."""
    port = request.config.getoption("--board")
    if not port:
        pytest.skip("the on-board tier needs --board PORT (a board's MicroPython REPL)")
    try:
        b = OnBoard(port)
    except ConnectionError as e:
        pytest.fail(str(e), pytrace=False)
    from hanota import boardspec
    try:
        b.kind = _kind(b, request.config.getoption("--board-kind"))
    except BaseException:
        b.close()
        raise
    b.spec = boardspec.load_board(b.kind)
    request.config.stash[_BOARD] = b
    yield b
    del request.config.stash[_BOARD]
    b.close()


@pytest.fixture(scope="module", autouse=True)
def _fresh_heap(request):
    """Each test module starts with the heap the board had at connect (modules unloaded after)."""
    yield
    b = request.config.stash.get(_BOARD, None)
    if b is not None:
        free = b.unload()
        print("[board: modules unloaded after %s, %d bytes of heap free]" % (request.node.name, free))


@pytest.fixture
def on_board(board, request):
    """on_board(code, timeout=60) -> the JSON result of a check run on the board; counts the test."""
    ran = request.config.stash[_RAN]

    def run(code: str, timeout: float = 60):
        ran.add(request.node.nodeid)
        return board.call(code, timeout)
    return run


@pytest.fixture
def need(board):
    """need('hanfw.zcl', 'bchk_zcl'): import modules on the board (pushed when first needed)."""
    return board.need

