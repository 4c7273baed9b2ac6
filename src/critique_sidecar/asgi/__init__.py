"""The ASGI front door: the metered chat route as middleware for any Python gateway, and a
reference gateway that runs the whole product without Envoy."""

from .middleware import Middleware

__all__ = ["Middleware"]
