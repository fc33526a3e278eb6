"""The example producer: an orders API that writes orders and their events in one transaction.

`POST /orders` stores the order and its `order.placed` event (in `bus_outbox`) together; `bus
relay` publishes the event afterwards, so the API never waits on, or fails with, the broker.
`GET /orders/{id}` follows the order: placed → published → shipment_requested, the last one
recorded by the API's own embedded subscriber (`orders`, bound to `shipment.requested`).

Run it with `python -m api [--host H] [--port P]` or `uvicorn api.orders:app`.

Modules, each importing only those above it:
    settings, catalogue, schemas   pure data: configuration, prices, request and response shapes
    db                             the tables and the engine (SQLite WAL or PostgreSQL/asyncpg)
    repository                     place an order with its event; read it; record its progress
    progress                       the `orders` subscriber's router (`api.progress:router`)
    supervisor, metrics            the embedded subscriber's lifecycle; request latency
    services                       what runs while the app serves: database, orders, subscriber
    orders                         the FastAPI app (`create_app`, `app`); __main__ runs uvicorn
"""
