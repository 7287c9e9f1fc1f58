# Shared fixtures live in tests/fixtures/ (importable because pyproject sets
# pythonpath = ["tests"]); each module there is a pytest plugin.
from __future__ import annotations

import pytest

pytest_plugins = [
    "fixtures.token_servers",
    "fixtures.controlplane",
    "fixtures.idp_servers",
    "fixtures.node",
]

# Fixtures of one machine-wide thing: the test node (a fixed bridge and pod network) and
# the real IdPs (a JVM each; one start per run is enough). Tests that use one run in one
# worker process, together.
SHARED_BY_GROUP = {
    "node": {"node", "operator_image"},
    "keycloak": {"keycloak", "keycloak_home", "keycloak_newer", "keycloak_newer_home"},
    "hydra": {"hydra", "hydra_binary"},
}


def xdist_group(item: pytest.Item) -> str:
    """The worker group of a test: that of the machine-wide fixture it uses, else its
    file (tests of one file share module fixtures and may rely on their order)."""
    from fixtures.idp_servers import _fixtures_of  # a plugin: imported after registration

    used = _fixtures_of(item)
    if item.path.parent.name == "node":
        return "node"
    for group, fixtures in SHARED_BY_GROUP.items():
        if used & fixtures:
            return group
    return str(item.path)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group(item)))
