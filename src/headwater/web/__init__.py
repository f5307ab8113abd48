"""headwater.web: the HTTP front end (metrics, health, JSON API, the console).

A front end like the Headwater protocol server: it reads the broker's
counters and snapshots and never writes. See docs/observability.md.
"""

from __future__ import annotations

from ._app import COOKIE as COOKIE
from ._app import HttpApp as HttpApp
from ._embedded import open_broker as open_broker
from ._http import Request as Request
from ._http import Response as Response
from ._http import serve_http_connection as serve_http_connection
from ._metrics import METRIC_NAMES as METRIC_NAMES
from ._metrics import render_metrics as render_metrics
from ._render import render_bytes as render_bytes
from ._server import DEFAULT_HTTP_PORT as DEFAULT_HTTP_PORT
from ._server import HttpServer as HttpServer
from ._server import open_http as open_http
from ._snapshot import MAX_PARTITION_SERIES as MAX_PARTITION_SERIES
from ._snapshot import BrokerView as BrokerView
from ._snapshot import gather as gather
from ._snapshot import readiness as readiness

__all__ = [
    "open_http",
    "open_broker",
    "HttpServer",
    "HttpApp",
    "DEFAULT_HTTP_PORT",
    "COOKIE",
    "MAX_PARTITION_SERIES",
    "METRIC_NAMES",
    "BrokerView",
    "gather",
    "readiness",
    "render_metrics",
    "render_bytes",
    "Request",
    "Response",
    "serve_http_connection",
]
