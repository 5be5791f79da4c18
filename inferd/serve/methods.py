"""The methods a path answers, for the `Allow` header of a 405 and of an OPTIONS answer.

Starlette's 405 names only the methods of the first route whose path matched, so a path served by two
routes (`GET` and `POST /v2/logging`) claimed `Allow: GET`. Here every route is asked, HEAD goes with GET
(the HEAD middleware answers it wherever GET is served), and a plain OPTIONS request, which HTTP lets a
client send to learn the methods, gets them with a 204 instead of a 405.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from inferd.serve.responses import json_error

_PROBED = ("GET", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> list[str]:
    routes = request.app.router.routes
    methods = [method for method in _PROBED
               if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)]
    if "GET" in methods:
        methods.append("HEAD")
    return sorted([*methods, "OPTIONS"]) if methods else []


def method_not_allowed(request: Request) -> Response:
    """The answer to a method the path does not serve: its methods, as 204 to OPTIONS and as 405 otherwise."""
    allow = {"Allow": ", ".join(allowed_methods(request))}
    if request.method == "OPTIONS":
        return Response(status_code=204, headers=allow)
    return json_error(405, f"{request.method} is not allowed on {request.url.path} (it takes {allow['Allow']}); "
                           "the API is listed at /docs", allow)
