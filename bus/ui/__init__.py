"""`bus ui`: the operator's web page over the broker, the outbox and the scheduler.

`create_app(UiConfig(...))` gives the ASGI app; `bus ui [--host H] [--port N]` serves it.
Modules: config (settings, the bind rule), auth (tokens, sessions, CSRF), browse (the DLQ
read in bulk, grouped, cached), overview (DLQ ages, outbox, scheduler), edit (checking an
edited body), backend (reads and actions), identity, api (JSON), pages (HTML), app.
"""

from __future__ import annotations

from bus.ui.app import create_app
from bus.ui.config import UiConfig, check_bind

__all__ = ["UiConfig", "check_bind", "create_app"]
