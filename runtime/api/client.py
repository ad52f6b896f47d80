"""A small client of the local API (stdlib ``http.client``), over TCP or a Unix socket.

``edgeship-device feedback`` uses it to reach the running agent; so can any Python program on the
device that does not want a dependency for it. It keeps its connection alive between calls and
reconnects once when the server closed an idle one.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from runtime.api import tensors
from runtime.api.settings import Address, UnixAddress
from runtime.errors import ApiError, TransportError

_RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def infer_body(
    inputs: Mapping[str, np.ndarray],
    outputs: Optional[Sequence[str]] = None,
    request_id: Optional[str] = None,
) -> dict[str, Any]:
    """An infer request document for ``inputs`` (arrays by input name), JSON tensor data."""
    doc: dict[str, Any] = {
        "inputs": [
            {
                "name": name,
                "shape": list(np.shape(array)),
                "datatype": tensors.datatype_of_array(np.asarray(array)),
                "data": tensors.encode_json(np.asarray(array)),
            }
            for name, array in inputs.items()
        ]
    }
    if outputs is not None:
        doc["outputs"] = [{"name": name} for name in outputs]
    if request_id is not None:
        doc["id"] = request_id
    return doc


class ApiClient:
    """Calls the local API at ``address``. Not thread-safe: one client per thread."""

    def __init__(self, address: Address, timeout_s: float = 30.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._connection: Optional[http.client.HTTPConnection] = None
        self._used = False

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            if isinstance(self.address, UnixAddress):
                self._connection = _UnixConnection(str(self.address.path), self.timeout_s)
            else:
                self._connection = http.client.HTTPConnection(
                    self.address.host, self.address.port, timeout=self.timeout_s
                )
            self._used = False
        return self._connection

    def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request; returns status, headers (lower-case names) and body.

        Raises TransportError when nothing answers at the address.
        """
        fields = {"Content-Type": "application/json"} if body is not None else {}
        fields.update(headers or {})
        for attempt in (1, 2):
            connection = self._connect()
            reused = self._used
            try:
                connection.request(method, path, body=body, headers=fields)
                response = connection.getresponse()
                data = response.read()
            except _RETRYABLE as e:
                self.close()
                if reused and attempt == 1:  # the server closed an idle keep-alive connection
                    continue
                raise TransportError(f"the API at {self.address} closed the connection") from e
            except OSError as e:
                self.close()
                raise TransportError(f"no API answers at {self.address}: {e}") from e
            self._used = True
            if response.will_close:
                self.close()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        raise AssertionError("unreachable")  # pragma: no cover

    def call(self, method: str, path: str, doc: Any = None) -> Any:
        """Send ``doc`` as JSON and return the JSON answer; raises ApiError for an error answer."""
        body = None if doc is None else json.dumps(doc).encode("utf-8")
        status, _, data = self.request(method, path, body)
        try:
            answer = json.loads(data) if data else None
        except ValueError as e:
            raise ApiError(f"the API answered {status} with a body that is not JSON", status) from e
        if status >= 300:
            message = answer.get("error") if isinstance(answer, dict) else None
            raise ApiError(str(message or f"the API answered {status}"), status)
        return answer

    def metadata(self, name: str) -> Any:
        return self.call("GET", f"/v2/models/{name}")

    def infer(
        self,
        name: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Optional[Sequence[str]] = None,
        request_id: Optional[str] = None,
    ) -> Any:
        """Run model ``name`` on ``inputs``; the protocol's response document."""
        doc = infer_body(inputs, outputs, request_id)
        return self.call("POST", f"/v2/models/{name}/infer", doc)

    def feedback(self, name: str, prediction_id: str, labels: Sequence[Any]) -> Any:
        """Send ground truth for an earlier prediction (one label per row)."""
        doc = {"id": prediction_id, "labels": list(labels)}
        return self.call("POST", f"/v2/models/{name}/feedback", doc)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
