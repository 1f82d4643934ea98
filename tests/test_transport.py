"""The connection wrapper behind the service's HTTP protocol: a turn's writes go out as one send."""

from __future__ import annotations

import asyncio

from riskengine.api.transport import CoalescedWrites


def test_writes_of_one_turn_are_sent_once_in_order_and_close_sends_them_first() -> None:
    sends: list[bytes] = []

    class Recording:
        """The real socket transport, with each write it is asked for noted."""

        def __init__(self, transport: asyncio.Transport) -> None:
            self.transport = transport

        def write(self, data: bytes) -> None:
            sends.append(data)
            self.transport.write(data)

        def __getattr__(self, name: str):
            return getattr(self.transport, name)

    class Answer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:
            self.out = CoalescedWrites(Recording(transport), asyncio.get_running_loop())  # type: ignore[arg-type]

        def data_received(self, data: bytes) -> None:
            if data.startswith(b"two"):
                self.out.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")   # head, then body:
                self.out.write(b"ok")                                            # one turn
            else:
                self.out.write(b"bye")
                self.out.close()                                                 # written, then closed

    async def talk() -> tuple[bytes, bytes]:
        server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"two")
        first = await reader.readexactly(len(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"))
        writer.write(b"close")
        rest = await asyncio.wait_for(reader.read(), 5)                          # until the server closes
        writer.close()
        server.close()
        return first, rest

    first, rest = asyncio.run(talk())
    assert first == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" and rest == b"bye"
    assert sends == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", b"bye"]
