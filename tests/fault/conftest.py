"""The fault tier's fixtures (fault/fixtures.py) and its results file at the end."""
from fault import results
from fault.fixtures import kit, reference, shared_dir, snapshot, workdir  # noqa: F401


def pytest_sessionfinish(session):
    results.finish(session)


def pytest_runtest_teardown(item):
    results.progress(item.config)


def pytest_terminal_summary(terminalreporter):
    """Print the counts (when this conftest is loaded by the controlling process too, as
    when tests/fault is named on the command line)."""
    path = results.RESULTS_MD
    try:
        data = results.load(path)
    except results.ResultsError as e:
        terminalreporter.write_line("hanota fault results: %s; not rewritten" % e)
        return
    if data:
        for line in results.summary(data):
            terminalreporter.write_line(line)
