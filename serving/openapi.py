"""The OpenAPI document of the service's own routes (served at /openapi.json, used by schemathesis); the
request limits are the configured ones (`serving.max_ids_per_request`, `serving.max_members_per_request`)."""

import copy

from retain.config import ServingConfig

BEARER = [{"bearer": []}]
ERROR = {
    "description": "bad request: the body names the field",
    "content": {"application/json": {"schema": {"type": "object"}}},
}
# The 4xx answers of the routes that take a body.
REJECTED = {"401": {"description": "missing or wrong token"}, "400": ERROR, "413": ERROR, "422": ERROR}
UNAUTHORIZED = {"401": {"description": "missing or wrong token"}}


def post_json(summary: str, schema: dict, ok: str) -> dict:
    """A bearer-protected POST taking a JSON body with `schema`."""
    return {
        "post": {
            "summary": summary,
            "security": BEARER,
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": {"200": {"description": ok}, **REJECTED},
        }
    }


SCORE_REQUEST = {
    "type": "object",
    "required": ["member_ids"],
    "additionalProperties": False,
    "properties": {
        "member_ids": {
            "type": "array",
            "minItems": 1,
            "maxItems": ServingConfig.max_ids_per_request,  # the defaults; `document` sets the configured
            "uniqueItems": True,
            "items": {"type": "string", "minLength": 1},
        }
    },
}
SCORE_FEATURES_REQUEST = {
    "type": "object",
    "required": ["members"],
    "properties": {
        "as_of": {"type": "string", "format": "date"},
        "members": {
            "type": "array",
            "minItems": 1,
            "maxItems": ServingConfig.max_members_per_request,
            "items": {
                "type": "object",
                "required": ["member_id"],
                "properties": {"member_id": {"type": "string", "minLength": 1}},
                "additionalProperties": {"type": ["number", "null"]},
            },
        },
    },
}
OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "retain scoring service", "version": "1"},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "paths": {
        "/score": post_json(
            "Scores, action and reasons of members in the current snapshot",
            SCORE_REQUEST,
            "scores; unknown ids are listed in `unknown`",
        ),
        "/score_features": post_json(
            "Score members from features the caller holds (reasons computed per request)",
            SCORE_FEATURES_REQUEST,
            "scores",
        ),
        "/model": {
            "get": {
                "summary": "Model names, versions, metrics and the snapshot each worker serves",
                "security": BEARER,
                "responses": {"200": {"description": "model info"}, **UNAUTHORIZED},
            }
        },
        "/reload": {
            "post": {
                "summary": "Pick up a newly promoted champion and snapshot in every worker",
                "security": BEARER,
                "responses": {"200": {"description": "reloaded"}, **UNAUTHORIZED},
            }
        },
    },
}


def document(serving: ServingConfig) -> dict:
    """The OpenAPI document with the request limits of `serving`."""
    doc = copy.deepcopy(OPENAPI)
    paths = doc["paths"]
    body = paths["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body["properties"]["member_ids"]["maxItems"] = serving.max_ids_per_request
    body = paths["/score_features"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body["properties"]["members"]["maxItems"] = serving.max_members_per_request
    return doc
