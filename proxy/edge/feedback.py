"""POST /v1/feedback: a client rates the answer to one of its own chat requests.

The body is ``{"request_id": "...", "rating": "good" | "bad"}`` with an optional ``"score"`` in [0, 1] and a
``"comment"``. The request id is the ``x-request-id`` of the answer (or of the error: a failed request, or one
for a concrete model, can be rated too; the export decides what can train a router). A key can rate only its
own requests: the lookup is by (key owner, request id), so another key's request, an unknown one and an expired
one all get the same 404, which tells a client nothing about other keys' traffic. Authentication, rate limits
and in-flight budgets are the guard's, as for every ``/v1`` path.
"""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy import metrics, pools
from proxy.edge.routes import read_json
from proxy.errors import BadRequest, NotFound, ProxyError
from proxy.services import services
from proxy.state.records import Rating, RecordStore, StoreError, UnknownRequest

FIELDS = ("request_id", "rating", "score", "comment")
LIMIT_COMMENT_CHARS = 4000
LIMIT_BODY_BYTES = 64_000


class FeedbackUnavailable(ProxyError):
    status_code = 503
    type = "server_error"


def parse_feedback(body: Any) -> tuple[str, Rating, float | None, str | None]:
    """Validate a rating body; every error names the field, as OpenAI's ``param`` does."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object with request_id and rating.")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise BadRequest(f"Unrecognized request argument supplied: {unknown[0]} (allowed: {', '.join(FIELDS)})",
                         param=unknown[0])
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not 1 <= len(request_id) <= 128:
        raise BadRequest("`request_id` must be the x-request-id of a chat request (a string of 1 to 128 "
                         "characters)", param="request_id")
    rating = body.get("rating")
    if rating not in ("good", "bad"):
        raise BadRequest(f"`rating` must be \"good\" or \"bad\", got {rating!r}"[:200], param="rating")
    score = body.get("score")
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score) \
                or not 0.0 <= score <= 1.0:
            raise BadRequest(f"`score` must be a number between 0 and 1, got {score!r}"[:200], param="score")
        score = float(score)
    comment = body.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > LIMIT_COMMENT_CHARS):
        raise BadRequest(f"`comment` must be a string of at most {LIMIT_COMMENT_CHARS} characters", param="comment")
    return request_id, rating, score, comment


async def post_feedback(request: Request) -> Response:
    body = await read_json(request, LIMIT_BODY_BYTES)
    request_id, rating, score, comment = parse_feedback(body)
    store: RecordStore | None = services(request).records
    if store is None:
        raise NotFound("feedback is switched off on this proxy (feedback.enabled: false)", code="feedback_disabled")
    owner: str = request.state.owner
    try:
        fb = await pools.run("feedback", store.rate, owner, request_id, rating, score, comment)
    except UnknownRequest:
        days = store.retention / 86400.0
        raise NotFound(f"no chat request with id {request_id!r} for this key: it is unknown, older than "
                       f"{days:g} days, or was made with another key", param="request_id",
                       code="request_not_found") from None
    except StoreError as exc:
        code = "feedback_store_full" if exc.reason == "full" else "feedback_store_unavailable"
        raise FeedbackUnavailable(f"{exc}; the rating was not stored", code=code) from None
    metrics.FEEDBACK.labels(fb.tier or "none", rating).inc()  # a configured tier's name or "none": a closed set
    return JSONResponse({"id": fb.id, "object": "feedback", "request_id": fb.request_id, "rating": fb.rating,
                         "score": fb.rating_score, "tier": fb.tier or None, "model": fb.model or None,
                         "routed": fb.routed, "status": fb.status,
                         "router_version": fb.router_version or None, "created_at": int(fb.created_at)})
