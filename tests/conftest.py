import pytest

from support.mpy import VECTORS


def pytest_addoption(parser):
    parser.addoption("--board", default=None, metavar="PORT",
                     help="run the device and e2e tiers on a real board at PORT instead of a virtual board; "
                          "tests/board runs its checks on it")
    parser.addoption("--board-kind", default=None, choices=["esp32", "nrf52840"],
                     help="what the --board is (default: asked from the board's modules)")
    parser.addoption("--link", default=None, metavar="PORT2",
                     help="tests/board, the OTA path: the serial port wired to the board's link UART "
                          "(nRF52840), or udp:HOST:PORT where the hub listens (ESP32)")
    parser.addoption("--wifi", default=None, metavar="SSID",
                     help="tests/board, the OTA path on a real ESP32: the Wi-Fi network the board joins")
    parser.addoption("--wifi-key", default="", metavar="KEY", help="tests/board: its passphrase (with --wifi)")
    parser.addoption("--ota-payload", default=None, metavar="FILE",
                     help="tests/board, the OTA path on a real ESP32: the MicroPython app image to send "
                          "(ESP32_GENERIC-OTA-<date>-v1.29.0.app-bin)")


@pytest.fixture
def vectors_dir():
    """tests/vectors: real files from other tools, committed with their provenance."""
    return VECTORS


@pytest.fixture
def real_board(request):
    """The --board PORT given on the command line, or None (virtual boards)."""
    return request.config.getoption("--board")


@pytest.fixture
def vboards(tmp_path, request):
    """Factory for fresh virtual boards, each stopped at the end of the test."""
    if request.config.getoption("--board"):
        pytest.skip("this test runs on virtual boards only (--board selects a real board)")
    from hanota.vboard.board import VirtualBoard

    made = []

    def make(board="vboard-esp32", name=None, **kw):
        name = name or "vb%d" % len(made)
        b = VirtualBoard(tmp_path / name, board=board, name=name, **kw)
        made.append(b)
        return b.start()

    yield make
    for b in made:
        b.stop()


@pytest.fixture(scope="session")
def vfirmware(tmp_path_factory):
    """Virtual firmware of the current device code for vboard-esp32 (version 1.0.0)."""
    from hanota import fwbuild

    out = tmp_path_factory.mktemp("fw")
    return fwbuild.build("vboard-esp32", "1.0.0", out)


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL 16 (the pgserver wheel's binaries) on a loopback TCP port chosen at run
    time, for the whole session (tests/support/servers.py); skips saying why it cannot start."""
    from support.servers import Postgres, running

    yield from running(Postgres, "PostgreSQL")


@pytest.fixture
def pg_uri(postgres_server):
    """The URI of a fresh, empty PostgreSQL database for one test."""
    return postgres_server.new_database()


@pytest.fixture(scope="session")
def nats_server():
    """A nats-server with JetStream on a loopback TCP port chosen at run time, for the whole
    session; skips saying why it cannot start. Tests that stop or restart it must start it
    again before they end."""
    from support.servers import Nats, running

    yield from running(Nats, "nats-server")


@pytest.fixture(scope="module")
def pkidir(tmp_path_factory):
    """A test PKI (`hanota pki init`: the Suppliers', Network Operator's and DCC's keys and
    certificates), one per test module."""
    from hanota.dcc import pki

    d = tmp_path_factory.mktemp("pki")
    pki.init(d)
    return d


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request, tmp_path):
    """Where the DCC's store lives, each test run on both: an SQLite file, or a fresh
    PostgreSQL database (pg_uri; skipped, saying why, where the server cannot start)."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_uri")
    return str(tmp_path / "dcc.db")


@pytest.fixture
def db(tmp_path):
    """A Comms Hub database (HubDB) in the test's directory, closed at the end. (A module
    with another `db`, e.g. on a test clock, defines its own.)"""
    from hanota.hub import HubDB

    d = HubDB.open(tmp_path / "hub.db")
    yield d
    d.close()
