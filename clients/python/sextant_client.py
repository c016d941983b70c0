"""sextant discovery protocol, version 1 -- an asyncio client written from protocol.md alone.

The protocol in five lines:

* QUIC v1 + TLS 1.3, ALPN ``sextant/1``; the server certificate is verified against a CA,
  server name ``localhost``.
* Every message is a *frame*: a big-endian u32 length (at most 4 MiB) followed by that many
  bytes of UTF-8 JSON, an object with a string member ``"type"``.
* Every request gets its own client-initiated bidirectional stream: write one frame, FIN,
  read one response frame, FIN.  ``subscribe`` is the exception: its stream carries
  ``event`` frames until the client stops it (STOP_SENDING) or closes the connection.
* The first stream of a connection must carry ``hello`` (answered by ``welcome``).
* A response ``{"type": "error", "code": ..., "message": ...}`` is a failed request; fatal
  errors also close the connection with the error's number as QUIC application error code.

Usage::

    async with await Connection.open("127.0.0.1:7600", ca="data/tls/ca.pem") as conn:
        await conn.ping(7)
        svc = service_key("default", "default", "orders")
        await conn.register(instance(svc, "10.0.0.1:8080", "10.0.0.1", 8080), binding_connection())
        async with conn.subscribe(scope_service(svc), from_revision=0) as sub:
            async for event in sub:
                print(event.type, event.revision)
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import ssl
import struct
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from aioquic.asyncio import connect as quic_connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration

__all__ = [
    "ALPN", "PROTOCOL_VERSION", "MAX_FRAME", "ERROR_NUMBERS", "FATAL_CODES",
    "SextantError", "ConnectionClosed", "FrameError",
    "Connection", "Subscription", "Event", "RawStream",
    "encode_frame", "service_key", "config_key", "instance", "service_spec",
    "binding_persistent", "binding_connection", "binding_lease", "binding_ttl",
    "scope_all", "scope_namespace", "scope_service", "scope_config", "content_version",
]

ALPN = "sextant/1"
PROTOCOL_VERSION = 1
MAX_FRAME = 4 * 1024 * 1024          # 4,194,304 bytes, section 2
IDLE_TIMEOUT_S = 10.0                # section 1
KEEPALIVE_S = 2.0                    # section 1
DEFAULT_TIMEOUT_S = 5.0              # client-side bound on every request

# Section 7: error code -> number (the number is the QUIC application error code when fatal).
ERROR_NUMBERS = {
    "protocol_error": 1,
    "unsupported_version": 2,
    "unauthenticated": 3,
    "timeout": 4,
    "forbidden": 10,
    "invalid": 11,
    "not_found": 12,
    "lease_not_found": 13,
    "unavailable": 14,
    "internal": 15,
    "plugin_rejected": 16,
    "limited": 17,
    "conflict": 18,
}
FATAL_CODES = {"protocol_error", "unsupported_version", "unauthenticated", "timeout"}


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------

class SextantError(Exception):
    """An ``error`` frame from the server.  ``code`` is the string, ``number`` its number."""

    def __init__(self, code: str, message: str = ""):
        self.code = code
        self.number = ERROR_NUMBERS.get(code)
        self.message = message
        self.connection_closed: ConnectionClosed | None = None  # set when it closed the connection
        super().__init__(f"{code}: {message}" if message else code)

    @property
    def closes_connection(self) -> bool:
        return self.code in FATAL_CODES


class ConnectionClosed(Exception):
    """The QUIC connection is gone.

    ``application`` is true for an application CONNECTION_CLOSE (frame 0x1d); then
    ``error_code`` is the sextant error number (0 = normal close, 1 = protocol_error, ...).
    """

    def __init__(self, error_code: int, reason: str, application: bool, by_peer: bool):
        self.error_code = error_code
        self.reason = reason
        self.application = application
        self.by_peer = by_peer
        kind = "application" if application else "transport"
        who = "peer" if by_peer else "local"
        super().__init__(f"connection closed ({who}, {kind} code {error_code}): {reason!r}")

    @property
    def code_name(self) -> str | None:
        if not self.application:
            return None
        for name, num in ERROR_NUMBERS.items():
            if num == self.error_code:
                return name
        return "normal" if self.error_code == 0 else None


class FrameError(Exception):
    """The server sent something that is not a valid frame (client-side protocol check)."""


# --------------------------------------------------------------------------------------
# Frames (section 2)
# --------------------------------------------------------------------------------------

def encode_frame(message: dict[str, Any]) -> bytes:
    payload = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(payload) > MAX_FRAME:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_FRAME}")
    return struct.pack(">I", len(payload)) + payload


def decode_payload(payload: bytes) -> dict[str, Any]:
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FrameError(f"payload is not UTF-8 JSON: {e}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise FrameError(f"payload is not an object with a string 'type': {message!r}")
    return message


# --------------------------------------------------------------------------------------
# Encodings (section 5): small constructors so callers do not have to remember the shapes
# --------------------------------------------------------------------------------------

def service_key(namespace: str, group: str, service: str) -> dict[str, str]:
    return {"namespace": namespace, "group": group, "service": service}


def config_key(namespace: str, group: str, data_id: str) -> dict[str, str]:
    return {"namespace": namespace, "group": group, "data_id": data_id}


def instance(service: dict, id: str, ip: str, port: int, **optional: Any) -> dict[str, Any]:
    """optional: weight, enabled, healthy, zone, version, metadata (ephemeral is set by the
    server from the binding)."""
    return {"service": service, "id": id, "ip": ip, "port": port, **optional}


def service_spec(service: dict, protect_threshold: float = 0.0,
                 metadata: dict[str, str] | None = None) -> dict[str, Any]:
    return {"service": service, "protect_threshold": protect_threshold,
            "metadata": metadata or {}}


def binding_persistent() -> dict:
    return {"kind": "persistent"}


def binding_connection() -> dict:
    return {"kind": "connection"}


def binding_lease(lease: "str | int") -> dict:
    return {"kind": "lease", "lease": lease}


def binding_ttl(ttl_ms: int) -> dict:
    return {"kind": "ttl", "ttl_ms": ttl_ms}


def scope_all() -> dict:
    return {"scope": "all"}


def scope_namespace(namespace: str) -> dict:
    return {"scope": "namespace", "key": namespace}


def scope_service(service: dict) -> dict:
    return {"scope": "service", "key": service}


def scope_config(key: dict) -> dict:
    return {"scope": "config", "key": key}


def content_version(content: str) -> str:
    """A config entry's ``version``: lowercase hex sha256 of the content (its UTF-8 bytes)."""
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------
# QUIC plumbing: one receive buffer per stream
# --------------------------------------------------------------------------------------

class _StreamState:
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.fin = False
        self.reset_code: int | None = None
        self.closed: ConnectionClosed | None = None
        self.changed = asyncio.Event()

    def wake(self) -> None:
        self.changed.set()


class _Protocol(QuicConnectionProtocol):
    """Routes aioquic events to per-stream buffers and records how the connection ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams: dict[int, _StreamState] = {}
        self.close_info: ConnectionClosed | None = None
        self.closed_event = asyncio.Event()
        self.local_close = False

    def quic_event_received(self, event: qe.QuicEvent) -> None:
        if isinstance(event, qe.StreamDataReceived):
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.buffer += event.data
                st.fin = st.fin or event.end_stream
                st.wake()
        elif isinstance(event, qe.StreamReset):
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.reset_code = event.error_code
                st.wake()
        elif isinstance(event, qe.ConnectionTerminated):
            # aioquic reports frame_type None for an application CONNECTION_CLOSE (0x1d).
            by_peer = not self.local_close
            self.close_info = ConnectionClosed(
                event.error_code, event.reason_phrase,
                application=event.frame_type is None, by_peer=by_peer)
            for st in self.streams.values():
                st.closed = self.close_info
                st.wake()
            self.closed_event.set()


class RawStream:
    """One bidirectional stream.  Exposed so tests can send malformed bytes on purpose."""

    def __init__(self, conn: "Connection") -> None:
        self._conn = conn
        self._proto = conn._proto
        self.stream_id = self._proto._quic.get_next_available_stream_id()
        self._state = _StreamState()
        self._proto.streams[self.stream_id] = self._state

    # -- sending --------------------------------------------------------------------
    def send(self, data: bytes, fin: bool = False) -> None:
        self._conn._raise_if_closed()
        self._proto._quic.send_stream_data(self.stream_id, data, end_stream=fin)
        self._proto.transmit()

    def send_frame(self, message: dict, fin: bool = True) -> None:
        self.send(encode_frame(message), fin=fin)

    def stop(self, error_code: int = 0) -> None:
        """STOP_SENDING: tell the server we no longer read this stream (ends a subscription)."""
        if self._proto.close_info is None:
            try:
                self._proto._quic.stop_stream(self.stream_id, error_code)
                self._proto.transmit()
            except ValueError:
                pass  # stream already fully closed
        self.forget()

    def forget(self) -> None:
        self._proto.streams.pop(self.stream_id, None)

    # -- receiving ------------------------------------------------------------------
    async def _wait_for(self, n: int) -> bool:
        """Wait until n bytes are buffered (True) or the stream ended first (False)."""
        st = self._state
        while len(st.buffer) < n:
            if st.closed is not None:
                raise st.closed
            if st.reset_code is not None:
                raise FrameError(f"stream reset by server with code {st.reset_code}")
            if st.fin:
                return False
            st.changed.clear()
            await st.changed.wait()
        return True

    async def read_frame(self) -> dict | None:
        """The next frame, or None if the stream finished cleanly at a frame boundary."""
        st = self._state
        if not await self._wait_for(4):
            if st.buffer:
                raise FrameError(f"stream finished inside a length prefix ({len(st.buffer)} bytes)")
            return None
        (length,) = struct.unpack(">I", st.buffer[:4])
        if length > MAX_FRAME:
            raise FrameError(f"frame length {length} exceeds {MAX_FRAME}")
        if not await self._wait_for(4 + length):
            raise FrameError(f"stream finished inside a frame ({len(st.buffer) - 4} of {length} bytes)")
        payload = bytes(st.buffer[4:4 + length])
        del st.buffer[:4 + length]
        return decode_payload(payload)

    async def read_end(self) -> None:
        """Expect the server's FIN with no bytes after the frame already read."""
        if await self._wait_for(1):
            raise FrameError(f"{len(self._state.buffer)} unexpected bytes after the response frame")


# --------------------------------------------------------------------------------------
# Subscriptions (section 8)
# --------------------------------------------------------------------------------------

@dataclass
class Event:
    revision: int
    type: str                       # "upsert" | "remove" | "reset"
    record: dict | None = None      # upsert
    key: dict | None = None         # remove
    snapshot: dict | None = None    # reset
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_frame(cls, frame: dict) -> "Event":
        if frame.get("type") != "event" or not isinstance(frame.get("event"), dict):
            raise FrameError(f"expected an event frame, got {frame!r}")
        e = frame["event"]
        return cls(revision=e["revision"], type=e["type"], record=e.get("record"),
                   key=e.get("key"), snapshot=e.get("snapshot"), raw=e)


class Subscription:
    """An async iterator of :class:`Event`.  ``last_revision`` is what to resume from."""

    def __init__(self, stream: RawStream, from_revision: int) -> None:
        self._stream = stream
        self.last_revision = from_revision
        self._done = False

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Event:
        if self._done:
            raise StopAsyncIteration
        frame = await self._stream.read_frame()
        if frame is None:          # server finished the stream
            self._done = True
            self._stream.forget()
            raise StopAsyncIteration
        if frame["type"] == "error":
            self._done = True
            self._stream.forget()
            raise SextantError(frame.get("code", "?"), frame.get("message", ""))
        # A reset too large for one frame: reset_chunk frames, then the reset with the rest.
        chunks: list[dict] = []
        chunk_revision = None
        while frame["type"] == "reset_chunk":
            if chunk_revision not in (None, frame["revision"]):
                raise FrameError(f"reset_chunk of revision {frame['revision']} after {chunk_revision}")
            chunk_revision = frame["revision"]
            chunks.extend(frame["records"])
            frame = await self._stream.read_frame()
            if frame is None:
                raise FrameError("stream finished inside a chunked reset")
        event = Event.from_frame(frame)
        if chunk_revision is not None:
            if event.type != "reset" or event.revision != chunk_revision:
                raise FrameError(f"reset_chunk of revision {chunk_revision} followed by {event.type} {event.revision}")
            event.snapshot["records"] = chunks + event.snapshot["records"]
        self.last_revision = event.revision
        return event

    async def next(self, timeout: float | None = DEFAULT_TIMEOUT_S) -> Event:
        """The next event, waiting at most ``timeout`` seconds (asyncio.TimeoutError)."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def close(self) -> None:
        if not self._done:
            self._done = True
            self._stream.stop(0)

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


# --------------------------------------------------------------------------------------
# Connection
# --------------------------------------------------------------------------------------

class Connection:
    """One QUIC connection to a sextant server.  Create it with :meth:`open`."""

    def __init__(self) -> None:
        self._stack = AsyncExitStack()
        self._proto: _Protocol = None  # type: ignore[assignment]
        self._keepalive: asyncio.Task | None = None
        self._nonces = itertools.count(1)
        self.welcome: dict | None = None
        self.timeout = DEFAULT_TIMEOUT_S

    @classmethod
    async def open(cls, addr: str, ca: str, *, token: str | None = None,
                   client: str | None = "sextant-py", hello: bool = True,
                   version: int = PROTOCOL_VERSION, timeout: float = DEFAULT_TIMEOUT_S,
                   server_name: str = "localhost") -> "Connection":
        """Connect (QUIC + TLS with ALPN ``sextant/1``, verified against ``ca``) and, unless
        ``hello=False``, send ``hello`` on the first stream."""
        host, _, port = addr.rpartition(":")
        host = host.strip("[]")
        config = QuicConfiguration(
            is_client=True,
            alpn_protocols=[ALPN],
            server_name=server_name,
            verify_mode=ssl.CERT_REQUIRED,   # never disabled
            idle_timeout=IDLE_TIMEOUT_S,
        )
        config.load_verify_locations(cafile=ca)
        self = cls()
        self.timeout = timeout
        try:
            self._proto = await asyncio.wait_for(
                self._stack.enter_async_context(
                    quic_connect(host, int(port), configuration=config, create_protocol=_Protocol)),
                timeout)
        except BaseException:
            await self._stack.aclose()
            raise
        self._keepalive = asyncio.create_task(self._keepalive_loop())
        if hello:
            try:
                await self.hello(version=version, token=token, client=client)
            except SextantError as e:
                # unsupported_version / unauthenticated: an error frame, then the server
                # closes the connection with the error's number.  Record that close.
                if e.closes_connection:
                    try:
                        e.connection_closed = await self.wait_closed(timeout)
                    except asyncio.TimeoutError:
                        e.connection_closed = None
                await self.close()
                raise
            except BaseException:
                await self.close()
                raise
        return self

    async def __aenter__(self) -> "Connection":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _keepalive_loop(self) -> None:
        # Section 1: keep-alive every 2 s from both ends (a QUIC PING is enough).
        while self._proto.close_info is None:
            await asyncio.sleep(KEEPALIVE_S)
            if self._proto.close_info is None:
                self._proto._quic.send_ping(0)
                self._proto.transmit()

    # -- lifecycle -----------------------------------------------------------------
    @property
    def closed(self) -> ConnectionClosed | None:
        return self._proto.close_info if self._proto else None

    def _raise_if_closed(self) -> None:
        if self._proto.close_info is not None:
            raise self._proto.close_info

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT_S) -> ConnectionClosed:
        """Wait until the connection is closed (by the server) and say how."""
        await asyncio.wait_for(self._proto.closed_event.wait(), timeout)
        assert self._proto.close_info is not None
        return self._proto.close_info

    async def close(self, error_code: int = 0, reason: str = "") -> None:
        """Close the connection (code 0 = normal close)."""
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._proto is not None and self._proto.close_info is None:
            self._proto.local_close = True
            self._proto.close(error_code=error_code, reason_phrase=reason)
        try:
            await asyncio.wait_for(self._stack.aclose(), self.timeout)
        except asyncio.TimeoutError:
            pass

    # -- request/response ----------------------------------------------------------
    def open_stream(self) -> RawStream:
        self._raise_if_closed()
        return RawStream(self)

    async def request(self, message: dict, timeout: float | None = None) -> dict:
        """Send one request on a new stream and return its (non-error) response.
        Raises SextantError for an error frame, ConnectionClosed if the connection ends."""
        stream = self.open_stream()
        try:
            stream.send_frame(message, fin=True)

            async def exchange() -> dict:
                frame = await stream.read_frame()
                if frame is None:
                    raise FrameError(f"stream finished without a response to {message['type']}")
                await stream.read_end()
                return frame

            response = await asyncio.wait_for(exchange(), timeout or self.timeout)
        finally:
            stream.forget()
        if response["type"] == "error":
            raise SextantError(response.get("code", "?"), response.get("message", ""))
        return response

    @staticmethod
    def _expect(response: dict, type_: str) -> dict:
        if response["type"] != type_:
            raise FrameError(f"expected {type_!r}, got {response!r}")
        return response

    # -- section 6 requests --------------------------------------------------------
    async def hello(self, version: int = PROTOCOL_VERSION, token: str | None = None,
                    client: str | None = None) -> dict:
        msg: dict[str, Any] = {"type": "hello", "version": version}
        if token is not None:
            msg["token"] = token
        if client is not None:
            msg["client"] = client
        self.welcome = self._expect(await self.request(msg), "welcome")
        return self.welcome

    @property
    def grace_ms(self) -> int | None:
        return self.welcome.get("grace_ms") if self.welcome else None

    async def ping(self, nonce: int | None = None) -> int:
        nonce = next(self._nonces) if nonce is None else nonce
        r = self._expect(await self.request({"type": "ping", "nonce": nonce}), "pong")
        if r.get("nonce") != nonce:
            raise FrameError(f"pong nonce {r.get('nonce')!r} != {nonce}")
        return nonce

    async def register(self, instance: dict, binding: dict) -> dict:
        """-> ``{"type": "written", "revision": R}`` (+ ``"lease"`` for lease/ttl bindings)."""
        return self._expect(await self.request(
            {"type": "register", "instance": instance, "binding": binding}), "written")

    async def deregister(self, service: dict, id: str) -> dict:
        return self._expect(await self.request(
            {"type": "deregister", "service": service, "id": id}), "written")

    async def grant_lease(self, ttl_ms: int) -> dict:
        return self._expect(await self.request({"type": "grant_lease", "ttl_ms": ttl_ms}), "lease")

    async def keepalive(self, lease: "str | int") -> dict:
        return self._expect(await self.request({"type": "keepalive", "lease": lease}), "lease")

    async def revoke_lease(self, lease: "str | int") -> dict:
        return self._expect(await self.request({"type": "revoke_lease", "lease": lease}), "written")

    async def put_service(self, spec: dict) -> dict:
        return self._expect(await self.request({"type": "put_service", "spec": spec}), "written")

    async def get_service(self, service: dict) -> dict:
        return self._expect(await self.request({"type": "get_service", "service": service}), "service")

    async def list(self, scope: dict) -> dict:
        return self._expect(await self.request({"type": "list", "scope": scope}), "records")

    def subscribe(self, scope: dict, from_revision: int = 0) -> Subscription:
        """Open a subscription stream.  Iterate it for events; an error (e.g. forbidden)
        surfaces as SextantError from the first iteration."""
        stream = self.open_stream()
        stream.send_frame({"type": "subscribe", "scope": scope, "from": from_revision}, fin=True)
        return Subscription(stream, from_revision)

    async def config_get(self, key: dict) -> dict | None:
        """-> the config entry, or None."""
        return self._expect(await self.request({"type": "config_get", "key": key}), "config")["entry"]

    async def config_put(self, key: dict, content: str) -> dict:
        """-> ``written`` with ``version`` (sha256 hex of the content)."""
        return self._expect(await self.request(
            {"type": "config_put", "key": key, "content": content}), "written")

    async def config_delete(self, key: dict) -> dict:
        return self._expect(await self.request({"type": "config_delete", "key": key}), "written")

    async def pick(self, service: dict, hash_key: str | None = None,
                   headers: list[tuple[str, str]] | None = None,
                   tried: list[str] | None = None) -> dict:
        """-> ``{"type": "picked", "instance": INSTANCE or None, "protection_active": bool}``.

        ``tried``: the instances (``"IP:PORT"``) this request already tried, in order (a
        retry); the balancer steers past them."""
        msg: dict[str, Any] = {"type": "pick", "service": service}
        if hash_key is not None:
            msg["hash_key"] = hash_key
        if headers is not None:
            msg["headers"] = [[k.lower(), v] for k, v in headers]
        if tried:
            msg["tried"] = list(tried)
        return self._expect(await self.request(msg), "picked")

    async def plugin_list(self) -> dict:
        return self._expect(await self.request({"type": "plugin_list"}), "plugins")
