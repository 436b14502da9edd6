"""Per-file protocol states and the tables of allowed transitions.

A file moves through these states on both peers (protocol.md, "File life
cycle").  Anything not in a table is a protocol violation: from the peer it is
a RemoteProtocolError, from our own caller a LocalProtocolError.

    OFFERED --DECISION--> SENDING --CHUNK/RESTART--> SENDING
       |                     |--FILE_END/SKIP/ABORT--> ENDED --RESULT--> DONE
       '--RESULT (refused, dir, symlink)----------------------------------> DONE
"""

from __future__ import annotations

import enum


class FileState(enum.Enum):
    __hash__ = object.__hash__  # members are singletons: the identity hash, in C (Enum's is Python, per step)

    OFFERED = "offered"  # offer sent, no decision yet
    SENDING = "sending"  # decision given, chunks flow
    ENDED = "ended"  # sender is finished with the file, result pending
    FAILED = "failed"  # receiver only: result sent early, sender frames still in flight
    DONE = "done"  # result given

    # members are singletons and compare by identity: hash them so too (Enum.__hash__ hashes the
    # name in Python code, twice per file in the transition table's lookups)
    __hash__ = object.__hash__


class In(enum.Enum):
    __hash__ = object.__hash__  # (as FileState's)

    DECISION = "DECISION"
    RESULT = "RESULT"
    CHUNK = "DATA"
    RESTART = "RESTART"
    END = "FILE_END"
    SKIP = "SKIP"
    ABORT = "ABORT_FILE"

    __hash__ = object.__hash__  # as FileState's


S, I = FileState, In  # noqa: E741

_COMMON = {
    (S.OFFERED, I.DECISION): S.SENDING,
    (S.OFFERED, I.RESULT): S.DONE,
    (S.SENDING, I.CHUNK): S.SENDING,
    (S.SENDING, I.RESTART): S.SENDING,
    (S.SENDING, I.END): S.ENDED,
    (S.SENDING, I.SKIP): S.ENDED,
    (S.SENDING, I.ABORT): S.ENDED,
    (S.ENDED, I.RESULT): S.DONE,
}

SENDER_TRANSITIONS = {
    **_COMMON,
    (S.SENDING, I.RESULT): S.DONE,  # the receiver failed the file early: stop sending it
}

RECEIVER_TRANSITIONS = {
    **_COMMON,
    (S.SENDING, I.RESULT): S.FAILED,  # we failed it early; drop what is still in flight
    (S.FAILED, I.CHUNK): S.FAILED,
    (S.FAILED, I.RESTART): S.FAILED,
    (S.FAILED, I.END): S.DONE,
    (S.FAILED, I.SKIP): S.DONE,
    (S.FAILED, I.ABORT): S.DONE,
}

RESOLVED = frozenset({S.DONE, S.FAILED})
