"""The HTTP routes of the scoring service: authenticate, validate with `retain.api`, call the worker's
state, respond. Every bad request is a 4xx JSON body naming the field; nothing here returns a 500."""

from __future__ import annotations

import asyncio
import hmac
import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from retain import api
from serving.openapi import OPENAPI

PROTECTED = {"/score", "/score_features", "/model", "/reload"}
log = logging.getLogger("retain.serving")


def build_app(service) -> Starlette:
    """The routes, bound to the BentoML service instance that holds the worker's state."""

    def authorized(request: Request) -> bool:
        if service.token is None:  # serving.allow_anonymous = true
            return True
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), service.token.encode())

    async def read_json(request: Request) -> object:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > api.MAX_BODY_BYTES:
            raise api.RequestError(413, "body", f"The request body is {int(declared):,} bytes; the limit is 5 MB.")
        return api.parse_json(await request.body())

    def guarded(handler):
        async def endpoint(request: Request) -> Response:
            if request.url.path in PROTECTED and not authorized(request):
                return JSONResponse(
                    {"error": "Missing or wrong bearer token.", "field": "Authorization"},
                    401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            try:
                return await handler(request, service.current_state())
            except api.RequestError as exc:
                return JSONResponse(exc.body(), exc.status)
            except Exception:  # a bug must not become a bare 500 with a traceback for the caller
                log.exception("request failed")
                return JSONResponse({"error": "The service failed on this request; it is logged.", "field": None}, 503)

        return endpoint

    async def score(request: Request, state) -> Response:
        ids = api.parse_score_request(await read_json(request), service.config.serving.max_ids_per_request)
        return Response(state.score_response(ids), media_type="application/json")

    async def score_features(request: Request, state) -> Response:
        frame, as_of = api.parse_features_request(
            await read_json(request), state.feature_names, service.config.serving.max_members_per_request
        )
        body = await asyncio.to_thread(state.score_features, frame, as_of)
        return JSONResponse(body)

    async def model(request: Request, state) -> Response:
        return JSONResponse({**state.describe(), "workers": service.workers.live()})

    async def reload(request: Request, state) -> Response:
        fresh = await asyncio.to_thread(service.reload)
        return JSONResponse({"reloaded": True, **fresh.describe()})

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    return Starlette(
        routes=[
            Route("/score", guarded(score), methods=["POST"]),
            Route("/score_features", guarded(score_features), methods=["POST"]),
            Route("/model", guarded(model), methods=["GET"]),
            Route("/reload", guarded(reload), methods=["POST"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ]
    )
