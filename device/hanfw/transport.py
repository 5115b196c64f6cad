# hanota device: carries link frames to and from the hub.
#   UdpTransport: one frame per datagram (ESP32 on Wi-Fi; the virtual board's relay)
#   StreamTransport: SLIP-framed frames on a byte stream (nRF52840 UART; a pty)
# recv(timeout_ms) returns one frame (bytes; a memoryview valid until the next recv on a
# stream) or None; rx_frame is the longest frame it takes (the client announces it to the
# hub, which then bundles blocks).

import select

from hanfw import link


class UdpTransport:
    def __init__(self, host, port, rx_frame=link.RX_FRAME):
        import socket  # here, not at the top: the nRF port has no socket module (UART link only)
        self.rx_frame = rx_frame
        self.addr = socket.getaddrinfo(host, port)[0][-1]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(socket.getaddrinfo("0.0.0.0", 0)[0][-1])
        # never a blocking read: poll can report a datagram that is then not there (Linux
        # drops one with a bad checksum only when it is read), and a read that blocks is a
        # board that never answers again
        self.sock.setblocking(False)
        self.poll = select.poll()
        self.poll.register(self.sock, select.POLLIN)

    def send(self, frame):
        self.sock.sendto(frame, self.addr)

    # recvfrom, not readinto: MicroPython's readinto is a stream read that goes on into the
    # next datagram until the buffer is full (two frames run together, both refused). Its
    # buffer is rx_frame long, which the client lowers when it asks for no bundles: a
    # 64 KiB heap in pieces may not have 4.5 KiB in one piece for every datagram.
    def recv(self, timeout_ms):
        if not self.poll.poll(max(0, int(timeout_ms))):
            return None
        try:
            data, _ = self.sock.recvfrom(self.rx_frame + 64)
        except OSError:  # EAGAIN (nothing there after all), or an ICMP error from the last send
            return None
        return data

    def close(self):
        self.sock.close()


class StreamTransport:
    # stream: an object with write(bytes) and readinto(buf) / read(n), pollable
    def __init__(self, stream, rx_frame=link.RX_FRAME):
        self.stream = stream
        self.rx_frame = rx_frame
        self.dec = link.SlipDecoder(rx_frame + 4)
        self.buf = bytearray(256)
        self._off = 0  # bytes of buf not yet decoded: buf[_off:_end] (after a frame ended)
        self._end = 0
        self.poll = select.poll()
        # a real machine.UART polls as itself; the virtual board's UART gives its fd
        self.poll.register(stream.fileno() if hasattr(stream, "fileno") else stream, select.POLLIN)

    def send(self, frame):
        data = link.slip_encode(frame)
        mv = memoryview(data)
        while mv:
            n = self.stream.write(mv)
            if n is None:
                n = 0
            mv = mv[n:]

    # The frame is a memoryview into the decoder's buffer, not a copy (see
    # link.SlipDecoder.feed_frame): valid until the next recv, so whoever keeps any of
    # it copies it. Bytes read after the end of a frame wait in buf for the next call.
    def recv(self, timeout_ms):
        if self._off < self._end:
            frame = self._decode()
            if frame is not None:
                return frame
        if not self.poll.poll(max(0, int(timeout_ms))):
            return None
        n = self.stream.readinto(self.buf)
        if not n:
            return None
        self._off = 0
        self._end = n
        return self._decode()

    def _decode(self):
        dec = self.dec
        self._off = dec.feed_frame(self.buf, self._off, self._end)
        return dec.frame

    def close(self):
        try:
            self.stream.close()
        except OSError:
            pass


# "udp:HOST:PORT" or "serial:PATH" -> a transport (virtual boards and hosts).
def open_spec(spec):
    kind, _, rest = spec.partition(":")
    if kind == "udp":
        host, _, port = rest.rpartition(":")
        return UdpTransport(host, int(port))
    if kind == "uart":
        import machine
        return StreamTransport(machine.UART(1, 115200))
    raise ValueError("unknown link %r (udp:HOST:PORT or uart:...)" % spec)
