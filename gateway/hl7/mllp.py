"""MLLP (HL7 v2.5.1 Appendix C): a message is framed as 0x0B, the message, 0x1C 0x0D.

The reader holds at most ``limit`` bytes of one frame: a longer frame is read on and dropped up to its end
block, and reported as oversized, so that a sender gets an answer and a megabyte stream of junk costs no more
memory than a valid message. Bytes outside a frame are skipped (and counted) up to the next start block.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

START, END = b"\x0b", b"\x1c\x0d"
_READ = 64 * 1024
_HEAD = 4096


def frame(message: bytes) -> bytes:
    return START + message + END


@dataclass(frozen=True, slots=True)
class Frame:
    message: bytes
    oversized: int = 0
    """When the frame exceeded the limit: its length (``message`` is then empty)."""
    skipped: int = 0
    """Bytes outside any frame before this one."""
    head: bytes = b""
    """The first bytes of an oversized frame: enough to answer its sender (MSH)."""


class FrameReader:
    def __init__(self, reader: asyncio.StreamReader, limit: int) -> None:
        self._reader = reader
        self._limit = limit
        self._buffer = bytearray()

    async def next(self) -> Frame | None:
        """The next frame; None at the end of the stream (a frame cut off by it is dropped)."""
        skipped = 0
        while (start := self._buffer.find(START)) < 0:
            skipped += len(self._buffer)
            self._buffer.clear()
            if not await self._fill():
                return None
        skipped += start
        del self._buffer[: start + 1]
        searched = 0
        dropped = 0
        head = b""
        while (end := self._buffer.find(END, searched)) < 0:
            searched = max(0, len(self._buffer) - 1)
            if len(self._buffer) + dropped > self._limit:
                head = head or bytes(self._buffer[:_HEAD])
                dropped += searched
                del self._buffer[:searched]
                searched = 0
            if not await self._fill():
                return None
        message = bytes(self._buffer[:end])
        del self._buffer[: end + len(END)]
        if dropped or len(message) > self._limit:
            return Frame(b"", dropped + len(message), skipped, head or message[:_HEAD])
        return Frame(message, 0, skipped)

    async def _fill(self) -> bool:
        data = await self._reader.read(_READ)
        self._buffer += data
        return bool(data)


class MllpConnection:
    """One client connection: messages sent in order, each answered on it before the next (original mode)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int) -> None:
        self._frames = FrameReader(reader, limit)
        self._writer = writer

    @classmethod
    async def open(cls, host: str, port: int, tls: ssl.SSLContext | None = None, timeout: float = 30.0,
                   limit: int = 1024 * 1024) -> MllpConnection:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=tls), timeout)
        return cls(reader, writer, limit)

    async def exchange(self, message: bytes, timeout: float = 30.0) -> bytes:
        """Send one message and return the acknowledgment's bytes; raises ConnectionError when the peer closes
        without one, TimeoutError when it does not answer in time."""
        self._writer.write(frame(message))
        await self._writer.drain()
        answer = await asyncio.wait_for(self._frames.next(), timeout)
        if answer is None or answer.oversized:
            raise ConnectionError("the HL7 peer closed the connection without an acknowledgment")
        return answer.message

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass
