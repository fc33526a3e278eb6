"""The JSON API behind every page of `bus ui`: status, DLQ groups, a message, replay, purge, edit.

Reads are open (like the pages); every POST needs `Authorization: Bearer $BUS_UI_TOKEN`.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field, model_validator

from bus.ops.dlq import Parked
from bus.ui.backend import Backend, Selection
from bus.ui.browse import attempts_number
from bus.ui.identity import require_bearer

router = APIRouter(prefix="/api")


def backend_of(request: Request) -> Backend:
    backend = request.app.state.backend
    assert isinstance(backend, Backend)
    return backend


class ReplayRequest(BaseModel):
    """`{"ids": [...]}`, `{"all": true}` or `{"group": "<exception type>"}`; `rate` per second."""

    ids: list[str] | None = None
    all: bool = False
    group: str | None = None
    rate: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_selection(self) -> ReplayRequest:
        if sum((self.ids is not None, self.all, self.group is not None)) != 1:
            raise ValueError('give exactly one of "ids", "all": true or "group"')
        return self

    def selection(self) -> Selection:
        return Selection(ids=self.ids, group=self.group)


class EditRequest(BaseModel):
    """The event's new data, replayed under the parked message's id once it validates."""

    id: str
    data: Any


def story(p: Parked) -> dict[str, Any]:
    """A parked message in full: its summary, headers, body and stack trace."""
    try:
        body: Any = json.loads(p.body)
    except ValueError:
        body = p.body.decode(errors="replace")
    headers = {k: plain(v) for k, v in p.headers.items()}
    return {
        "id": p.id, "type": p.type, "reason": p.reason,
        "attempts": attempts_number(p.attempts),
        "exception_type": p.exception_type, "exception_message": p.exception_message,
        "failed_at": p.failed_at, "stacktrace": p.stacktrace, "headers": headers, "body": body,
    }  # fmt: skip


def plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)  # datetimes, decimals


@router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    return await backend_of(request).status()


@router.get("/subscribers/{name}/dlq")
async def dlq(name: str, request: Request) -> dict[str, Any]:
    return {"subscriber": name, **(await backend_of(request).dlq(name)).as_dict()}


@router.get("/subscribers/{name}/dlq/message")
async def message(name: str, id: str, request: Request) -> dict[str, Any]:
    return story(await backend_of(request).story(name, id))


@router.post("/subscribers/{name}/dlq/replay")
async def replay(
    name: str, body: ReplayRequest, request: Request, who: str = Depends(require_bearer)
) -> dict[str, Any]:
    done, missing = await backend_of(request).replay(
        name, body.selection(), who=who, rate=body.rate
    )
    return {"replayed": len(done), "ids": [p.id for p in done], "missing": missing}


@router.post("/subscribers/{name}/dlq/purge")
async def purge(name: str, request: Request, who: str = Depends(require_bearer)) -> dict[str, Any]:
    return {"purged": await backend_of(request).purge(name, who=who)}


@router.post("/subscribers/{name}/dlq/edit")
async def edit(
    name: str, body: EditRequest, request: Request, who: str = Depends(require_bearer)
) -> dict[str, Any]:
    checked = await backend_of(request).edit_and_replay(
        name, body.id, json.dumps(body.data), who=who
    )
    if not checked.ok:
        raise HTTPException(422, {"problems": list(checked.problems)})
    return {"replayed": body.id}
