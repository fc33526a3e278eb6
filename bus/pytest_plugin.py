"""The pytest plugin of `bus.testing` (entry point `pytest11`): a `testbus` fixture.

```python
async def test_confirmation_is_sent(testbus):
    await testbus.publish("order.placed", {...}, id="op-1")
    await testbus.settle()
    assert [h.id for h in testbus.handled("email")] == ["op-1"]
```

The topology is the ini option `bus_topology`, else `BUS_TOPOLOGY`, else
`topology/topology.yaml`; the routers are each subscriber's `handlers:`. For other routers,
build `bus.testing.TestBus(topology, routers={...})` in the test. No broker is involved.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from bus.testing import TestBus


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("bus_topology", "topology file of the `testbus` fixture", default="")


@pytest.fixture
def testbus(request: pytest.FixtureRequest) -> Iterator[TestBus]:
    """A `bus.testing.TestBus` over the project's topology, with every subscriber's handlers."""
    from bus.settings import Settings  # imported on use: loading the plugin stays cheap
    from bus.testing import TestBus

    ini = str(request.config.getini("bus_topology"))
    path = ini or Settings.from_env().topology  # BUS_TOPOLOGY, or topology/topology.yaml
    yield TestBus(topology=path)
