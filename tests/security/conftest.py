"""The security tier shares the fault tier's fixtures and results file."""
import pytest

from fault import results
from fault.fixtures import kit, reference, shared_dir, snapshot, workdir  # noqa: F401
from hanota.keys import load_private_key, load_public_key


@pytest.fixture(scope="module")
def key(kit):  # noqa: F811 - kit is the fault tier's fixture
    """The deployed boards' signing key (the fault tier's kit)."""
    return load_private_key(kit.keys / "private.pem")


@pytest.fixture(scope="module")
def pub(kit):  # noqa: F811
    """Its public key, as the boards pin it."""
    return load_public_key(kit.keys / "public.bin")


def pytest_sessionfinish(session):
    results.finish(session)


def pytest_runtest_teardown(item):
    results.progress(item.config)
