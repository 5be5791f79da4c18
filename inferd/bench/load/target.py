"""What a load test aims at: a server that answers, one of its models, and that model's V2 metadata.

Read before any load is sent, over the protocol the load will use, so that a wrong address, a model the
server does not have or a server that is not ready is a one-line error rather than a table of failures.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from inferd.errors import InferdError, InvalidInput, ModelNotFound
from inferd.serve.access import key_headers


@dataclass(frozen=True)
class Target:
    protocol: str  # "http" or "grpc"
    address: str  # the HTTP base URL (scheme, host, port), or host:port for gRPC
    model: str
    metadata: dict[str, Any]  # V2 model metadata: name, versions, inputs and outputs with datatype and shape
    headers: dict[str, str]  # what every request carries besides its body's own headers: the API key


    @property
    def inputs(self) -> list[dict[str, Any]]:
        return list(self.metadata.get("inputs", []))

    @property
    def outputs(self) -> list[str]:
        return [o["name"] for o in self.metadata.get("outputs", [])]


def _pick(model: str | None, names: list[str] | None, where: str) -> str:
    if names is not None and not names:
        raise ModelNotFound(f"{where} serves no model that is ready; load one, or wait for it to load")
    if model is None:
        if names is None:
            raise InvalidInput(f"{where} does not list its models; name one with --model")
        return names[0]
    if names is not None and model not in names:
        raise ModelNotFound(f"{where} has no model {model!r}; it serves {', '.join(names)} (choose with --model)")
    return model


def _refused(status: int, where: str) -> None:
    if status in (401, 403):
        raise InferdError(f"{where} refused the API key ({status}): give the right one with --api-key or "
                          "INFERD_API_KEY")


def http_target(url: str, model: str | None, api_key: str | None = None, timeout_s: float = 10.0) -> Target:
    import httpx

    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"cannot use the URL {url!r}: give the server's address, e.g. http://127.0.0.1:8000")
    base = f"{parts.scheme}://{parts.netloc}"
    headers = key_headers(api_key)
    with httpx.Client(base_url=base, timeout=timeout_s, trust_env=False, headers=headers) as client:
        try:
            ready = client.get("/v2/health/ready")
        except httpx.HTTPError as exc:
            raise InferdError(f"cannot reach {base} ({type(exc).__name__}: {exc}); is `inferd serve` running "
                              "there? Check the host and port") from None
        if ready.status_code != 200:
            raise InferdError(f"{base} is not ready (GET /v2/health/ready answered {ready.status_code}); "
                              "wait for its models to load, or check it is a V2 inference server")
        index = client.post("/v2/repository/index", json={"ready": True})
        _refused(index.status_code, base)
        names = [row["name"] for row in index.json()] if index.status_code == 200 else None
        chosen = _pick(model, list(dict.fromkeys(names)) if names is not None else None, base)
        metadata = client.get(f"/v2/models/{urllib.parse.quote(chosen, safe='')}")
        _refused(metadata.status_code, base)
        if metadata.status_code != 200:
            raise ModelNotFound(f"{base} has no model {chosen!r} (GET /v2/models/{chosen} answered "
                                f"{metadata.status_code}); name one it serves with --model")
        return Target("http", base, chosen, metadata.json(), headers)


def grpc_target(address: str, model: str | None, api_key: str | None = None) -> Target:
    import tritonclient.grpc as grpc_client
    from tritonclient.utils import InferenceServerException

    address = address.removeprefix("grpc://").rstrip("/")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidInput(f"cannot use {address!r} as a gRPC address: give HOST:PORT, e.g. 127.0.0.1:8001 "
                           "(the port `inferd serve --grpc-port` opened)")
    client = grpc_client.InferenceServerClient(address)
    headers = {k.lower(): v for k, v in key_headers(api_key).items()}  # gRPC metadata keys are lower case
    try:
        try:
            ready = client.is_server_ready(headers=headers)
        except InferenceServerException as exc:
            raise InferdError(f"cannot reach the gRPC server at {address} ({exc.status()}); is `inferd serve "
                              "--grpc-port` running there? Check the host and port") from None
        if not ready:
            raise InferdError(f"the gRPC server at {address} is not ready; wait for its models to load")
        try:
            index = client.get_model_repository_index(headers=headers, as_json=True).get("models", [])
        except InferenceServerException as exc:
            raise InferdError(f"{address} refused to list its models ({exc.message()}); if it wants an API key, "
                              "give it with --api-key or INFERD_API_KEY") from None
        names = list(dict.fromkeys(row["name"] for row in index if row.get("state") == "READY"))
        chosen = _pick(model, names, address)
        try:
            metadata: dict[str, Any] = client.get_model_metadata(chosen, headers=headers, as_json=True)
        except InferenceServerException as exc:
            raise ModelNotFound(f"{address} has no model {chosen!r} ({exc.message()})") from None
    finally:
        client.close()
    for tensor in (*metadata.get("inputs", []), *metadata.get("outputs", [])):
        tensor["shape"] = [int(d) for d in tensor.get("shape", [])]  # protobuf's JSON writes int64 as strings
    return Target("grpc", address, chosen, metadata, headers)
