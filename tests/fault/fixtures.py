"""Fixtures shared by the fault and security tiers: one build kit, deployed-board snapshots
and clean reference runs, made once per test run and shared by the pytest workers (a folder
beside the results records, guarded by a lock). The tiers' conftests import them."""
from __future__ import annotations

import contextlib
import fcntl
import json

import pytest

from fault import cutkit, results


@contextlib.contextmanager
def _locked(path):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def shared_dir():
    d = results.run_dir() / "shared"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(scope="session")
def kit(shared_dir):
    with _locked(shared_dir / "kit.lock"):
        return cutkit.Kit.build(shared_dir / "kit")


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("faultruns")


def _cached(path, make, load):
    with _locked(str(path) + ".lock"):
        if path.exists():
            return load(json.loads(path.read_text()))
        obj = make()
        path.write_text(json.dumps(obj.to_json()))
        return obj


@pytest.fixture(scope="session")
def snapshot(kit, shared_dir):
    """snapshot(kind): a stopped board with V1 deployed and known to the hub."""
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = _cached(shared_dir / ("snapshot-%s.json" % kind),
                                  lambda: cutkit.make_snapshot(kit, kind, shared_dir),
                                  cutkit.Snapshot.from_json)
        return cache[kind]
    return get


@pytest.fixture(scope="session")
def reference(kit, shared_dir, snapshot):
    """reference(kind, scenario): the clean run (op count, phase marks, traced ops)."""
    cache = {}

    def get(kind, scenario):
        if (kind, scenario) not in cache:
            cache[kind, scenario] = _cached(
                shared_dir / ("reference-%s-%s.json" % (kind, scenario)),
                lambda: cutkit.reference_run(kit, snapshot(kind), scenario, shared_dir),
                cutkit.Reference.from_json)
        return cache[kind, scenario]
    return get

