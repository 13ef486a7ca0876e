"""Benchmark baseline (c): a webhook receiver written the way the eventsourcing docs show.

Verify the delivery, then create an aggregate and call `Application.save()` once per request,
with the library's defaults. It exists only to be measured against rollcall; run it with
`python scripts/baseline_receiver.py --port 8001` and DATABASE_URL set.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any
from uuid import UUID

import uvicorn
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.config import EventConfig
from service.eventstore.database import eventsourcing_env
from service.http.verification import Rejected, verify


class Delivery(Aggregate):
    """A received webhook delivery."""

    @event("Received")
    def __init__(self, slug: str, body: str, headers: dict[str, str]) -> None:
        self.slug = slug
        self.body = body
        self.headers = headers


class Deliveries(Application[UUID]):
    """The application: one aggregate and one save() per delivery."""

    def receive(self, slug: str, body: str, headers: dict[str, str]) -> UUID:
        delivery = Delivery(slug, body, headers)
        self.save(delivery)
        return delivery.id


def create_app(database_url: str, secret: str) -> Starlette:
    deliveries = Deliveries(env=eventsourcing_env(database_url))
    jte_event = EventConfig(slug="default", secrets=(secret,))

    async def receive(request: Request) -> JSONResponse:
        body = await request.body()
        headers = {k.decode("latin-1"): v for k, v in request.scope["headers"]}
        if isinstance(verify(jte_event, headers, body, time.time()), Rejected):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        kept: dict[str, Any] = {"content-type": request.headers.get("content-type", "")}
        delivery_id = await run_in_threadpool(deliveries.receive, "default", body.decode(), kept)
        return JSONResponse({"status": "accepted", "id": str(delivery_id)})

    return Starlette(routes=[Route("/webhooks/jte", receive, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    app = create_app(os.environ["DATABASE_URL"], os.environ["ROLLCALL_SECRET"])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
