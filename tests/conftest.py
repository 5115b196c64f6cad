import pytest

from support.mpy import VECTORS


def pytest_addoption(parser):
    parser.addoption("--board", default=None, metavar="PORT",
                     help="run the device and e2e tiers on a real board at PORT instead of a virtual board")


@pytest.fixture
def vectors_dir():
    if not VECTORS.is_dir():
        pytest.skip("interop vectors not found at %s (the shared/ folder beside the repo)" % VECTORS)
    return VECTORS
