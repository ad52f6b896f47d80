"""The local API's routes: which request path does what, over the inference service.

:class:`Api` turns one complete request (method, path, headers, body) into one
:class:`Response`; it knows nothing of sockets (``runtime.api.server`` does). Every failure becomes
the protocol's error document ``{"error": "..."}`` with a status that says whose fault it was:
400 the request, 404 an unknown model or path, 405 the method, 500 the model, 503 too busy.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from runtime.api import protocol
from runtime.api.settings import DEFAULT_API_LIMITS, ApiLimits
from runtime.errors import (
    ApiError,
    EdgeshipError,
    InputError,
    ModelError,
    StoreError,
)
from runtime.model import LoadedModel
from runtime.service import InferenceService

_log = logging.getLogger("edgeship.api")

_MODEL_PATH = re.compile(
    r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
    r"(?:/(?P<action>ready|infer|explain|feedback))?$"
)
_STATIC = {
    "/v2": "server",
    "/v2/": "server",
    "/v2/health/live": "live",
    "/v2/health/ready": "ready",
}
_POST_ACTIONS = ("infer", "explain", "feedback")

Headers = Mapping[str, str]
"""Request headers keyed by lower-case name."""


@dataclass(frozen=True)
class Response:
    """One answer: a JSON document, optionally followed by binary tensor data."""

    status: int
    doc: Any
    chunks: tuple[bytes, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> tuple[bytes, list[tuple[str, str]]]:
        """The body bytes and the headers that describe them."""
        head = json.dumps(self.doc, separators=(",", ":")).encode("utf-8")
        headers = list(self.headers)
        if not self.chunks:
            headers.append(("Content-Type", "application/json"))
            return head, headers
        headers.append(("Content-Type", "application/octet-stream"))
        headers.append((protocol.BINARY_HEADER, str(len(head))))
        return b"".join((head, *self.chunks)), headers


def error_response(status: int, message: str, **extra: Any) -> Response:
    return Response(status, {"error": message, **extra})


def status_of(error: EdgeshipError) -> int:
    """The HTTP status for an error raised while serving a request."""
    if isinstance(error, ApiError):
        return error.status
    if isinstance(error, InputError):
        return 400
    if isinstance(error, StoreError):
        return 404
    return 500


class Api:
    """The routes of the local API over one :class:`InferenceService`; thread-safe."""

    def __init__(self, service: InferenceService, limits: ApiLimits = DEFAULT_API_LIMITS) -> None:
        self.service = service
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.max_model_calls)

    def handle(self, method: str, target: str, headers: Headers, body: bytes) -> Response:
        """Answer one request. Never raises: every failure is an error response."""
        try:
            return self._route(method, target.split("?", 1)[0], headers, body)
        except EdgeshipError as e:
            response = error_response(status_of(e), str(e))
            if isinstance(e, _NotAllowed):
                return Response(response.status, response.doc, headers=(("Allow", e.allowed),))
            return response
        except Exception as e:  # noqa: BLE001 - a bug must cost one request a 500, not the server
            _log.exception("unexpected failure serving %s %s", method, target[:200])
            return error_response(500, f"internal error: {type(e).__name__}")

    # --- routing ------------------------------------------------------------------------------

    def _route(self, method: str, path: str, headers: Headers, body: bytes) -> Response:
        static = _STATIC.get(path)
        if static is not None:
            _allow(method, ("GET",))
            if static == "server":
                return Response(200, protocol.server_metadata())
            if static == "live":
                return Response(200, {"live": True})
            return self._server_ready()
        match = _MODEL_PATH.match(path)
        if match is None:
            raise ApiError(f"no such endpoint: {path[:200]} (see docs/local-api.md)", 404)
        name, version, action = match["name"], match["version"], match["action"]
        if action in _POST_ACTIONS:
            _allow(method, ("POST",))
            encoding = headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise ApiError(f"Content-Encoding {encoding[:40]!r} is not supported", 415)
            return self._post(action, name, version, headers, body)
        _allow(method, ("GET",))
        if action == "ready":
            return self._model_ready(name, version)
        return Response(200, protocol.model_metadata(self._model(name, version).manifest))

    def _post(
        self, action: str, name: str, version: Optional[str], headers: Headers, body: bytes
    ) -> Response:
        if action == "feedback":
            self._model(name, version)
            ident, labels = protocol.parse_feedback(body)
            record = self.service.feedback(name, ident, labels)
            return Response(
                200,
                {
                    "model_name": name,
                    "model_version": record.version,
                    "id": ident,
                    "accepted": int(record.actual.shape[0]),
                },
            )
        json_length = headers.get(protocol.BINARY_HEADER.lower())
        runner = self._infer if action == "infer" else self._explain
        return self._with_slot(lambda: runner(name, version, body, json_length))

    def _with_slot(self, work: Callable[[], Response]) -> Response:
        if not self._slots.acquire(timeout=self.limits.queue_wait_s):
            raise ApiError(
                f"busy: {self.limits.max_model_calls} requests are running; retry shortly", 503
            )
        try:
            return work()
        finally:
            self._slots.release()

    # --- endpoints ----------------------------------------------------------------------------

    def _model(self, name: str, version: Optional[str]) -> LoadedModel:
        model = self.service.model(name)
        manifest = model.manifest
        if version is not None and version not in (manifest.version, str(manifest.sequence)):
            raise ApiError(
                f"model {name} version {version[:40]} is not served (the active version is "
                f"{manifest.version}, sequence {manifest.sequence})",
                404,
            )
        return model

    def _server_ready(self) -> Response:
        store = self.service.registry.store
        if not store.initialized():
            return error_response(400, f"{store.home} has no trust policy yet", ready=False)
        for name in store.names():
            try:
                self.service.model(name)
            except EdgeshipError as e:
                return error_response(400, f"model {name} is not ready: {e}", ready=False)
        return Response(200, {"ready": True})

    def _model_ready(self, name: str, version: Optional[str]) -> Response:
        try:
            self._model(name, version)
        except ModelError as e:
            return error_response(400, str(e), name=name, ready=False)
        return Response(200, {"name": name, "ready": True})

    def _infer(
        self, name: str, version: Optional[str], body: bytes, json_length: Optional[str]
    ) -> Response:
        model = self._model(name, version)
        request = protocol.parse_infer(body, json_length)
        protocol.check_outputs(request, model.manifest)
        served = self.service.predict(name, request.feeds)
        doc, chunks = protocol.infer_response(request, served)
        return Response(200, doc, tuple(chunks))

    def _explain(
        self, name: str, version: Optional[str], body: bytes, json_length: Optional[str]
    ) -> Response:
        model = self._model(name, version)
        request = protocol.parse_infer(body, json_length)
        explanation = _explainer()(model, request.feeds)
        doc: dict[str, Any] = {
            "model_name": name,
            "model_version": model.manifest.version,
        }
        if request.id is not None:
            doc["id"] = request.id
        doc["explanation"] = explanation.to_dict()
        return Response(200, doc)


def _explainer() -> Callable[..., Any]:
    """``runtime.explain.explain``, imported when the first explanation is asked for."""
    try:
        from runtime.explain import explain
    except ImportError as e:
        raise ApiError("explanations are not available in this runtime", 501) from e
    return explain


class _NotAllowed(ApiError):
    def __init__(self, method: str, allowed: tuple[str, ...]) -> None:
        self.allowed = ", ".join(allowed)
        super().__init__(f"method {method[:20]} is not allowed here; use {self.allowed}", 405)


def _allow(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise _NotAllowed(method, allowed)
