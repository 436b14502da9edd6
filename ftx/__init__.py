"""ftx: resumable file transfer over TCP (and, later, reliable UDP)."""

__version__ = "0.1.0"
DEFAULT_PORT = 7431
