"""A client for reboundd, the email retry scheduler.

Blocking: ``Client`` (requests) and ``Consumer`` (events); asyncio:
``AsyncClient`` and ``AsyncConsumer``. Errors are ``ReboundError`` with the
protocol's ``code``. Standard library only.
"""

from ._protocol import MAX_LINE, ReboundError, parse_address
from .aio import AsyncClient, AsyncConsumer
from .client import Client, Consumer

__all__ = ["Client", "Consumer", "AsyncClient", "AsyncConsumer", "ReboundError", "parse_address", "MAX_LINE"]
__version__ = "0.1.0"
