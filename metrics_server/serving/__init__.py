"""HTTPS serving on Hypercorn's trio worker: TLS contexts, certificate generation and reload,
and the seam that shows the ASGI app each connection's verified client certificate.

Modules: `tls` (flags → SSLContext), `certs` (self-signed pair in --cert-dir), `reload`
(current context, polling, per-connection listener), `peercert` (the Hypercorn seam),
`server` (ServingConfig and serve()).
"""

from .certs import ensure_serving_cert
from .errors import ServingError
from .server import ServingConfig, serve
from .tls import TLSOptions

__all__ = ["ServingConfig", "ServingError", "TLSOptions", "ensure_serving_cert", "serve"]
