"""Arduino's m4-serial-forward-python container pattern (runs in the legacy venv).

Registers ``tty`` and ``echo`` with the proxy; ``tty`` notifications from the M4 (SerialRPC
output) are collected until CR LF and written, line by line, to the USB gadget serial port;
each line read from that port goes to the M4 as ``Client(...).call('tty', line)`` with a new
Client per call. Here the "gadget port" is a pty the test holds (a stand-in for /dev/ttyGS0).

Usage: python serial_forwarder.py PROXY_HOST REGISTER_PORT CALL_PORT SERVICE_PORT GADGET_TTY
"""

import os
import sys
import threading

import msgpackrpc


class SerialHandler:
    def __init__(self, gadget_fd):
        self.gadget_fd = gadget_fd
        self.pending = b""

    def tty(self, data):
        self.pending += data if isinstance(data, bytes) else data.encode("utf-8")
        while b"\r\n" in self.pending:
            line, self.pending = self.pending.split(b"\r\n", 1)
            os.write(self.gadget_fd, line + b"\r\n")

    def echo(self, value):
        return value


def forward_gadget_input(gadget_fd, proxy_host, call_port):
    pending = b""
    while True:
        data = os.read(gadget_fd, 1024)
        if not data:
            return
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            client = msgpackrpc.Client(msgpackrpc.Address(proxy_host, call_port), timeout=5)
            client.call("tty", line.rstrip(b"\r").decode("utf-8"))
            client.close()


def main():
    proxy_host = sys.argv[1]
    register_port, call_port, service_port = (int(a) for a in sys.argv[2:5])
    gadget_fd = os.open(sys.argv[5], os.O_RDWR | os.O_NOCTTY)
    server = msgpackrpc.Server(SerialHandler(gadget_fd))
    server.listen(msgpackrpc.Address("localhost", service_port))
    client = msgpackrpc.Client(msgpackrpc.Address(proxy_host, register_port))
    client.call("register", service_port, ["tty", "echo"])
    reader = threading.Thread(target=forward_gadget_input, args=(gadget_fd, proxy_host, call_port))
    reader.daemon = True
    reader.start()
    print("registered")
    sys.stdout.flush()
    server.start()


if __name__ == "__main__":
    main()
