"""The HTTP API's plumbing: typed dependencies, the error handlers, the middleware and the list
of routers the app includes. Domain packages hold the routers themselves (``<pkg>/views.py``)."""
