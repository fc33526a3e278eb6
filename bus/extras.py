"""Optional dependencies: what the core install leaves out, and the one line that says so.

`pip install bus` brings what publishing, consuming, retrying, parking and replaying need. The
rest comes with extras (`pip install "bus[postgres]"`): `postgres` (asyncpg), `sqlalchemy`,
`ui`, `otel`, `speed` (uvloop), `examples` (what the example services, the orders API and the
demo need) and `all`. Code that needs an extra imports it through `require`, so a missing one is
one clear line (`MissingExtra`, exit 1) rather than a `ModuleNotFoundError` traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from bus.errors import MissingExtra


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import *module*, which *what* needs and the *extra* installs; `MissingExtra` if absent.

    A module that is present but fails to import for another reason raises as it is: that is
    a broken install, not a missing extra."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".", 1)[0]
        if e.name is not None and e.name.split(".", 1)[0] == top:
            raise MissingExtra(
                f'{what} needs the "{extra}" extra: pip install "bus[{extra}]"', extra=extra
            ) from None
        raise
