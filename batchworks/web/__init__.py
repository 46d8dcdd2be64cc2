"""The batchworks dashboard: an ASGI app (Starlette, Jinja2 templates) for operators.

``create_app(backend, authorize=...)`` gives an app to mount under any path of a Starlette or
FastAPI app; ``batchworks web`` serves one alone (uvicorn). It needs the ``web`` extra:
``pip install 'batchworks[web]'``.
"""

from __future__ import annotations

from batchworks.web._app import create_app
from batchworks.web._security import Access, Authorize, PasswordAuth

__all__ = ["Access", "Authorize", "PasswordAuth", "create_app"]
