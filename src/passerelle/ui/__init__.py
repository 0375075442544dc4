"""The web console: ``passerelle serve`` answers it at ``/``, with no extra process and no network.

Server-rendered pages (Jinja templates, packaged with passerelle) with charts drawn as inline
SVG by :mod:`passerelle.report`, and one small script of its own for refreshing live tables.
:data:`router` holds every route; the serving app includes it. See ``docs/console.md``.
"""

from __future__ import annotations

from passerelle.ui.routes import router

__all__ = ["router"]
