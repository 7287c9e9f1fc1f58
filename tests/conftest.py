# Shared fixtures live in tests/fixtures/ (importable because pyproject sets
# pythonpath = ["tests"]); each module there is a pytest plugin.
pytest_plugins = [
    "fixtures.token_servers",
    "fixtures.controlplane",
    "fixtures.idp_servers",
    "fixtures.node",
]
