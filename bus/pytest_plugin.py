"""The pytest plugin of `bus.testing` (entry point `pytest11`): a `testbus` fixture.

```python
async def test_confirmation_is_sent(testbus):
    await testbus.publish("order.placed", {...}, id="op-1")
    await testbus.settle()
    assert [h.id for h in testbus.handled("email")] == ["op-1"]
```

The topology is the ini option `bus_topology` (relative to the ini file, as pytest's own path
options), else `BUS_TOPOLOGY`, else `topology/topology.yaml`; those two relative to the
working directory as for every `bus` command, or to pytest's root directory when not there.
The routers are each subscriber's `handlers:`. A test that is about some subscribers loads only
those, so the others' handlers (their SMTP, HTTP or files) never run; messages routed to the
others wait in their queues:

```python
@pytest.mark.testbus(subscribers=["loyalty"])
async def test_points_are_credited(testbus):
    ...
```

The fixture is entered and left as
`async with TestBus(...)` is: after each test the routers' shutdown hooks run and the worker
pools close. It needs pytest-asyncio. For other routers, build
`bus.testing.TestBus(topology, routers={...})` in the test. No broker is involved.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from bus.testing import TestBus

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the fixture then says what to install
    ASYNC_FIXTURES = False
else:
    ASYNC_FIXTURES = True


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("bus_topology", "topology file of the `testbus` fixture", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "testbus(subscribers=[...]): the `testbus` fixture loads only these subscribers' handlers",
    )


def topology_path(config: pytest.Config) -> Path:
    """Where the `testbus` fixture's topology is (see the module docstring)."""
    ini = str(config.getini("bus_topology"))
    if ini:
        base = config.inipath.parent if config.inipath is not None else config.rootpath
        return base / ini
    from bus.settings import Settings  # imported on use: loading the plugin stays cheap

    named = Path(Settings.from_env().topology)  # BUS_TOPOLOGY, or topology/topology.yaml
    if named.is_absolute() or named.exists():
        return named
    return config.rootpath / named


async def _testbus(request: pytest.FixtureRequest) -> AsyncIterator[TestBus]:
    from bus.testing import TestBus

    marker = request.node.get_closest_marker("testbus")
    subscribers = marker.kwargs.get("subscribers") if marker is not None else None
    async with TestBus(topology=topology_path(request.config), subscribers=subscribers) as tb:
        yield tb


if ASYNC_FIXTURES:
    testbus = pytest_asyncio.fixture(_testbus, name="testbus")
else:  # pragma: no cover

    @pytest.fixture(name="testbus")
    def _needs_pytest_asyncio() -> None:
        pytest.fail("the testbus fixture needs pytest-asyncio: pip install pytest-asyncio")
