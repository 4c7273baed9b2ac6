"""End-to-end fixtures. `front_door` runs a test once through Envoy + the sidecar and once
through the ASGI gateway, against the same Redis and fake upstream (one parametrised suite)."""

from __future__ import annotations

import pytest

from critique_sidecar.devtools.stack import FRONT_DOORS, Stack

from .helpers import FrontDoor
from .helpers import front_door as door_of


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def asgi_gateway(stack: Stack) -> str:
    """The ASGI gateway beside the session stack's Envoy, started on first use."""
    if "gateway" not in stack.procs:
        stack.start_gateway()
    return stack.gateway_url


@pytest.fixture(params=FRONT_DOORS)
def front_door(request: pytest.FixtureRequest, stack: Stack) -> FrontDoor:
    if request.param == "asgi":
        request.getfixturevalue("asgi_gateway")
    return door_of(stack, request.param)
