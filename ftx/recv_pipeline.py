"""How one receiver connection's events reach its storage work: the serve loop.

Input is read while nothing waits (``link.feed``); the events it raised are drained, runs of small
files that follow one another joined into one (``_drain``), cut in parts of ``BATCH`` files
(``_parts``), and each part handled in one worker-thread hop (``ReceiveSession.handle_all``) whose
RESULTs leave before the next part is handled.  When the --max-memory budget cannot take an item
or a buffer yet, reading stops (``ReceiverConnection.paused``, ``BufferWait``) until storage work
gives bytes back.  ``receiving.receive_over`` runs it for one link.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .core.events import Event, HandshakeComplete, SmallFilesReceived
from .core.frames import BufferWait
from .core.receiver import ReceiverConnection
from .errors import ErrorCode, FtxError
from .transport.link import link_busy

if TYPE_CHECKING:
    from .receiving import ReceiveSession


async def _worker_done(session: ReceiveSession) -> None:
    """Wait for the batch a worker thread is handling, if any (cancelled again: no more)."""
    if session.worker is not None and not session.worker.done():
        try:
            await asyncio.wait({session.worker})
        except asyncio.CancelledError:
            pass  # cancelled again (shutting down): close all the same


BATCH = 256  # events handled per thread hop (a quarter of the default --max-files-in-flight, so that the
# sender still has files in flight while a part is handled); their RESULTs are sent before the next part


async def _serve_loop(link, conn: ReceiverConnection, session: ReceiveSession, confirm=None) -> None:
    slow = session.SLOW_EVENTS
    await link.send(conn.data_to_send())
    while not conn.closed:
        if conn.paused:  # an item waits for room in --max-memory: read nothing until it fits
            with link_busy(link):  # (waiting for our own storage work is not the sender's silence)
                await _memory_freed(conn)
        else:
            try:
                await link.feed(conn)
            except BufferWait:  # no room for a buffer until small files being stored give bytes back
                if not conn.events_pending:
                    with link_busy(link):
                        await asyncio.sleep(MEMORY_POLL)
        # handling an event can raise new ones (the last RESULT completes the session)
        while events := _drain(conn):
            if confirm is not None and any(isinstance(ev, HandshakeComplete) for ev in events):
                with link_busy(link):  # the user's time at the question is not the sender's silence
                    refused = await confirm(conn.peer)
                if refused is not None:  # before anything offered is looked at
                    conn.send_error(ErrorCode.ABORTED, refused)
                    raise FtxError(refused.replace("the receiver ", "", 1), ErrorCode.ABORTED)
                confirm = None
            for part in _parts(events):
                if any(isinstance(ev, slow) for ev in part):
                    with link_busy(link):  # one thread hop for the whole part
                        # shielded: cancelling this task (a takeover, a limit) must not leave the
                        # thread running on while the session is closed under it; see receive_over
                        session.worker = asyncio.get_running_loop().run_in_executor(None, session.handle_all, part)
                        await asyncio.shield(session.worker)
                else:
                    session.handle_all(part)
                # this part's RESULTs go out now: the sender refills its window while we handle the
                # next part; but not once the session is over (this part settled its last item): the
                # DONE goes out after SessionComplete is handled (directory modes and mtimes set),
                # so that a sender that has ended finds its tree as it will stay
                if conn.pending_output and not conn.closed:
                    await link.send(conn.data_to_send())
        if conn.pending_output:
            await link.send(conn.data_to_send())


MEMORY_POLL = 0.005  # seconds between looks at the budget while a connection waits for room in it


async def _memory_freed(conn: ReceiverConnection) -> None:
    """Decode again once the budget has room for the item that paused ``conn``: at once when this
    connection's own settled files gave bytes back, else when other connections' do (or, when none
    is being stored any more, the item fails as before: BufferLimit)."""
    conn.resume()
    while conn.paused and not conn.events_pending:
        await asyncio.sleep(MEMORY_POLL)
        conn.resume()


def _parts(events: list[Event]):
    """``events`` in parts of BATCH files each (the last one less): a SmallFilesReceived counts
    its files, and one that does not fit is cut in two."""
    part: list[Event] = []
    files = 0
    for ev in events:
        if type(ev) is SmallFilesReceived:
            while files + len(ev.file_ids) > BATCH:
                k = BATCH - files
                a, b, c, d = ev.file_ids, ev.entries, ev.digests, ev.datas
                part.append(SmallFilesReceived(a[:k], b[:k], c[:k], d[:k]))
                yield part
                part, files = [], 0
                ev = SmallFilesReceived(a[k:], b[k:], c[k:], d[k:])
            if ev.file_ids:
                part.append(ev)
                files += len(ev.file_ids)
        else:
            part.append(ev)
            files += 1
        if files >= BATCH:
            yield part
            part, files = [], 0
    if part:
        yield part


def _drain(conn) -> list[Event]:
    """The events queued, runs of small files that follow one another joined into one (the
    records of a read each gave one or more: handled, stored and settled as one run)."""
    events: list[Event] = []
    last = None  # the SmallFilesReceived at the end of events, while its lists are ours to extend
    while (ev := conn.next_event()) is not None:
        if type(ev) is SmallFilesReceived:
            if last is not None:
                last.file_ids.extend(ev.file_ids)
                last.entries.extend(ev.entries)
                last.digests.extend(ev.digests)
                last.datas.extend(ev.datas)
                continue
            ev = last = SmallFilesReceived(list(ev.file_ids), list(ev.entries), list(ev.digests), list(ev.datas))
        else:
            last = None
        events.append(ev)
    return events
