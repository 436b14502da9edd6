# What ``import ftx`` exports, for type checkers: __init__.py imports these names on first use.
from .api import Ask as Ask, Event as Event, Receiver as Receiver, send as send, send_async as send_async
from .core.secure import AuthError as AuthError
from .errors import (ArgumentError as ArgumentError, ChecksumMismatch as ChecksumMismatch, ErrorCode as ErrorCode,
                     FtxError as FtxError, LocalProtocolError as LocalProtocolError, PeerError as PeerError,
                     ProtocolError as ProtocolError, RemoteProtocolError as RemoteProtocolError,
                     StorageError as StorageError, TransportError as TransportError, UnsafePath as UnsafePath)
from .limits import Limits as Limits
from .progress import Progress as Progress
from .receiving import FileReport as FileReport
from .sending import FileSendReport as FileSendReport, SendReport as SendReport

__version__: str
DEFAULT_PORT: int
__all__: list[str]
