"""OpenAI error objects of the HTTP front end.

Owns: `APIError` (status, message, type, param, code) and its JSON form
`{"error": {"message", "type", "param", "code"}}`, and the mapping of the deployment's
`HelixError`s to HTTP statuses. Sits at the edge of the data flow: every failure a route or
the coordinator reports leaves the front end through `error_response`.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from helix_jax.errors import HelixError, OverloadedError, RequestError

RETRY_AFTER_S = 1  # Retry-After of a 429: the queue moves in well under a second when it moves


class APIError(Exception):
    """One HTTP error answer; `param` names the offending request field, if any."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def unauthorized() -> APIError:
    return APIError(
        401, "invalid or missing API key: send it as 'Authorization: Bearer KEY'", "authentication_error", None, "invalid_api_key"
    )


def model_not_found(model: str, served: str) -> APIError:
    return APIError(
        404, f"the model {model!r} does not exist; this server serves {served!r}", "not_found_error", "model", "model_not_found"
    )


def queue_full(message: str) -> APIError:
    return APIError(429, message, "rate_limit_error", None, "queue_full", {"Retry-After": str(RETRY_AFTER_S)})


def unavailable(message: str, code: str) -> APIError:
    return APIError(503, message, "service_unavailable", None, code)


def from_helix(exc: HelixError) -> APIError:
    """The APIError of an error the coordinator (or the client socket) reported."""
    if isinstance(exc, OverloadedError):
        return queue_full(str(exc))
    if isinstance(exc, RequestError):
        if "out of service" in str(exc):  # no surviving route: the deployment, not the request
            return unavailable(str(exc), "not_ready")
        return bad_request(str(exc))
    return APIError(500, f"deployment error: {exc}", "server_error", None, "internal_error")


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
