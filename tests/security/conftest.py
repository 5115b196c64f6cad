"""The security tier shares the fault tier's fixtures and results file."""
from fault import results
from fault.fixtures import kit, reference, shared_dir, snapshot, workdir  # noqa: F401


def pytest_sessionfinish(session):
    results.finish(session)


def pytest_runtest_teardown(item):
    results.progress(item.config)
