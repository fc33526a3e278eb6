"""The sagas in `bus ui`: their instances, read from the store (`BUS_STORE_URL`) the way
`bus saga list | show` read it.

Pages: `/sagas` (each subscriber's sagas, instances by status), `/subscribers/{name}/sagas`
(the instances, newest first, filtered by `saga` and `status`) and
`/subscribers/{name}/sagas/{saga}/{key}` (state, status, every step, pending timeouts).
JSON API beside them, open to read like the rest of the API (nothing here changes anything):
`GET /api/sagas`, `GET /api/subscribers/{name}/sagas?saga=&status=&limit=`,
`GET /api/subscribers/{name}/sagas/{saga}/{key}` (the object of `bus saga show --json`).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from bus.sagas.report import SagaNotFound, listing, reading, sagas_of, showing
from bus.ui.api import backend_of
from bus.ui.backend import NotFound
from bus.ui.identity import config_of
from bus.ui.pages import render

router = APIRouter()
PAGE = 200  # instances a page lists

Status = Literal["running", "completed"]


def _store_url(request: Request) -> str:
    return config_of(request).settings.store_url


async def summary(request: Request) -> list[dict[str, Any]]:
    """One row per (subscriber, saga) with instances: how many run, how many completed."""
    rows: list[dict[str, Any]] = []
    async with reading(_store_url(request)) as sagas:
        for sub in backend_of(request).topology.subscriber_names:
            for saga, counts in (await sagas_of(sagas, sub)).items():
                rows.append({"subscriber": sub, "saga": saga, **counts})
    return rows


async def instances(
    request: Request, name: str, saga: str | None, status: str | None, limit: int
) -> dict[str, Any]:
    backend_of(request).subscriber(name)  # NotFound for a subscriber not in the topology
    async with reading(_store_url(request)) as sagas:
        try:
            found = await listing(sagas, name, saga=saga, status=status, limit=limit, detail=False)
        except SagaNotFound as exc:
            raise NotFound(str(exc)) from None
        names = list(await sagas_of(sagas, name))
    return {"subscriber": name, "sagas": names, "instances": found}


async def instance(request: Request, name: str, saga: str, key: str) -> dict[str, Any]:
    backend_of(request).subscriber(name)
    async with reading(_store_url(request)) as sagas:
        try:
            return await showing(sagas, name, saga, key)
        except SagaNotFound as exc:
            raise NotFound(str(exc)) from None


# -- the JSON API --------------------------------------------------------------------------


@router.get("/api/sagas")
async def api_summary(request: Request) -> dict[str, Any]:
    return {"sagas": await summary(request)}


@router.get("/api/subscribers/{name}/sagas")
async def api_instances(
    request: Request, name: str, saga: str | None = None, status: Status | None = None,
    limit: int = Query(default=100, ge=1, le=10_000),
) -> dict[str, Any]:  # fmt: skip
    return await instances(request, name, saga, status, limit)


@router.get("/api/subscribers/{name}/sagas/{saga}/{key:path}")
async def api_instance(request: Request, name: str, saga: str, key: str) -> dict[str, Any]:
    return await instance(request, name, saga, key)


# -- the pages ------------------------------------------------------------------------------


@router.get("/sagas", response_class=HTMLResponse, include_in_schema=False)
async def summary_page(request: Request) -> HTMLResponse:
    return render(request, "sagas.html", rows=await summary(request))


@router.get("/subscribers/{name}/sagas", response_class=HTMLResponse, include_in_schema=False)
async def instances_page(
    request: Request, name: str, saga: str | None = None, status: str | None = None
) -> HTMLResponse:
    saga = saga or None  # the filter form sends empty fields
    status = status if status in ("running", "completed") else None
    found = await instances(request, name, saga, status, PAGE)
    return render(request, "saga_list.html", name=name, saga=saga, status=status, page=PAGE,
                  **found)  # fmt: skip


@router.get(
    "/subscribers/{name}/sagas/{saga}/{key:path}",
    response_class=HTMLResponse, include_in_schema=False,
)  # fmt: skip
async def instance_page(request: Request, name: str, saga: str, key: str) -> HTMLResponse:
    found = await instance(request, name, saga, key)
    pretty = json.dumps(found["state"], indent=2, ensure_ascii=False)
    return render(request, "saga.html", name=name, o=found, pretty=pretty)
