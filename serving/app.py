"""The HTTP routes of the scoring service: authenticate, validate with `retain.api`, call the worker's
state, respond. Every bad request is a 4xx JSON body naming the field; a failure of the service itself is a
500 with an error id that its log line carries.

The bearer check belongs to each protected route (not to a list of paths), so it holds wherever the app
is mounted (a path prefix, `root_path` behind a proxy). CPU work (reasons computed on request, scoring
fresh features, reloading) runs in a thread, never on the worker's event loop."""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from retain import api
from retain.errors import RetainError
from serving import openapi as openapi_document

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
        """The body, read no further than the 5 MB limit whether or not Content-Length is sent."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > api.MAX_BODY_BYTES:
            raise api.RequestError(413, "body", f"The request body is {int(declared):,} bytes; the limit is 5 MB.")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > api.MAX_BODY_BYTES:
                raise api.RequestError(413, "body", "The request body is over the 5 MB limit.")
            chunks.append(chunk)
        return api.parse_json(b"".join(chunks))

    def guarded(handler, protected: bool = True):
        async def endpoint(request: Request) -> Response:
            if protected and not authorized(request):
                return JSONResponse(
                    {"error": "Missing or wrong bearer token.", "field": "Authorization"},
                    401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            try:
                state = service.state
                if service.is_stale():  # another worker reloaded: load the same, off the loop
                    state = await asyncio.to_thread(service.refresh)
                return await handler(request, state)
            except api.RequestError as exc:
                return JSONResponse(exc.body(), exc.status)
            except RetainError as exc:  # e.g. /reload found no snapshot: the served state is unchanged
                return JSONResponse({"error": str(exc), "field": None}, 503)
            except Exception:  # a bug: 500 (not retried as a 503 would be) with an id to find it in the log
                error_id = uuid.uuid4().hex[:12]
                log.exception("request failed (error id %s)", error_id)
                body = {
                    "error": f"The service failed on this request (error id {error_id}); it is logged.",
                    "field": None,
                }
                return JSONResponse({**body, "error_id": error_id}, 500)

        return endpoint

    async def score(request: Request, state) -> Response:
        ids = api.parse_score_request(await read_json(request), service.config.serving.max_ids_per_request)
        if state.needs_explaining(ids):  # reasons to compute: CPU work, off the loop
            return Response(await asyncio.to_thread(state.score_response, ids), media_type="application/json")
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

    document = openapi_document.document(service.config.serving)  # the configured request limits

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    return Starlette(
        routes=[
            Route("/score", guarded(score), methods=["POST"]),
            Route("/score_features", guarded(score_features), methods=["POST"]),
            Route("/model", guarded(model), methods=["GET"]),
            Route("/reload", guarded(reload), methods=["POST"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ]
    )
