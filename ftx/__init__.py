"""ftx: resumable file transfer over TCP and reliable UDP, as a command (``ftx``) and a library.

    import ftx

    report = ftx.send(["photos/"], "backup.example.net")        # -> ftx.SendReport
    async with ftx.Receiver("/srv/incoming") as r:              # an asyncio receiver
        async for event in r.events(): ...

``send``/``send_async`` and ``Receiver`` are documented in ``ftx.api``; errors are the
``ftx.errors`` tree (``FtxError`` at its root), exported here too.  The names below are
imported on first use, so ``import ftx`` stays cheap for the command line (and the sans-I/O
core, which imports this module, pulls in nothing else); type checkers read ``__init__.pyi``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
DEFAULT_PORT = 7431

_LAZY = {
    "send": "api", "send_async": "api", "Receiver": "api", "Event": "api", "Ask": "api",
    "Limits": "limits", "Progress": "progress", "SendReport": "sending", "FileSendReport": "sending",
    "FileReport": "receiving", "AuthError": "core.secure",
    **{name: "errors" for name in ("FtxError", "ArgumentError", "ProtocolError", "LocalProtocolError",
                                   "RemoteProtocolError", "ChecksumMismatch", "PeerError", "TransportError",
                                   "StorageError", "UnsafePath", "ErrorCode")},
}

__all__ = ["__version__", "DEFAULT_PORT", "send", "send_async", "Receiver", "Event", "Ask", "Limits", "Progress",
           "SendReport", "FileSendReport", "FileReport", "AuthError", "FtxError", "ArgumentError", "ProtocolError",
           "LocalProtocolError", "RemoteProtocolError", "ChecksumMismatch", "PeerError", "TransportError",
           "StorageError", "UnsafePath", "ErrorCode"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ftx' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
