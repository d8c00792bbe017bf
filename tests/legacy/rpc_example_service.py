"""Arduino's m4-rpc-example container, as its users write it (runs in the legacy venv).

A msgpackrpc Server exposing multiply/divide, registered with the proxy's port 5000 by
``Client(...).call('register', port, ['multiply', 'divide'])``; the M4 then calls them.

Usage: python rpc_example_service.py PROXY_HOST REGISTER_PORT SERVICE_PORT
"""

import sys

import msgpackrpc


class ExampleHandler:
    def multiply(self, a, b):
        return a * b

    def divide(self, a, b):
        return a / b


def main():
    proxy_host, register_port, service_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    server = msgpackrpc.Server(ExampleHandler())
    server.listen(msgpackrpc.Address("localhost", service_port))
    client = msgpackrpc.Client(msgpackrpc.Address(proxy_host, register_port))
    result = client.call("register", service_port, ["multiply", "divide"])
    print(f"registered {result!r}")
    sys.stdout.flush()
    server.start()


if __name__ == "__main__":
    main()
