# Shared fixtures live in tests/fixtures/ (importable because pyproject sets
# pythonpath = ["tests"]); each module there is a pytest plugin.
from __future__ import annotations

from typing import Any

import pytest

pytest_plugins = [
    "fixtures.token_servers",
    "fixtures.controlplane",
    "fixtures.idp_servers",
    "fixtures.node",
]

# The suite runs in two worker processes (pyproject's addopts), each with its own control
# plane. A worker takes a whole group of tests at a time: a file, or one of these groups
# of files whose tests share something there is one of per machine: the test node (a
# fixed bridge and pod network) and the real IdPs (a JVM each; one start per run).
GROUP_FILES = {
    "node": (
        "tests/node/",
        "tests/operator/test_deploy_on_node.py",
        "tests/operator/test_pods_read_token.py",
        "tests/operator/test_pull_secret_on_node.py",
    ),
    "idp": ("tests/idp/", "tests/operator/test_operator_idp.py"),
}
GROUP_FIXTURES = {
    "node": {"node", "operator_image"},
    "idp": {"keycloak", "keycloak_newer", "keycloak_home", "keycloak_newer_home", "hydra"},
}


def group_of(path: str) -> str:
    """The group of a test file, by its path relative to the repository (as in node IDs):
    the scheduler sees node IDs only, not the fixtures a test uses."""
    for group, prefixes in GROUP_FILES.items():
        if path.startswith(prefixes):
            return group
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keeps GROUP_FILES true: a test using a group's fixtures outside its files fails the
    collection, before two workers start two nodes."""
    from fixtures.idp_servers import _fixtures_of  # a plugin: imported after registration

    for item in items:
        path = item.nodeid.split("::")[0]
        for group, fixtures in GROUP_FIXTURES.items():
            if _fixtures_of(item) & fixtures and group_of(path) != group:
                raise pytest.UsageError(
                    f"{item.nodeid} uses {group} fixtures: list {path} in GROUP_FILES"
                    f"[{group!r}] (tests/conftest.py)"
                )


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    # pytest-xdist's own `--dist loadgroup` does not group under pytest 9 (it renames
    # node IDs, which pytest 9 no longer reads back): scope by group_of instead.
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid.split("::")[0])

    return GroupScheduling(config, log)
