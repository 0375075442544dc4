"""The HTTP API: FastAPI routers over the client, and the one table of error status codes.

``passerelle.api.app.create_app`` builds the application. ``passerelle.api.errors`` and
``passerelle.api.wire`` import no web framework, so the remote client can use them.
"""
