"""Linux -> M4 calls the way X8 container apps make them (runs in the legacy venv).

Usage: python call_m4.py HOST PORT MODE METHOD [JSON_ARG...]
MODE:
  call    one Client, one call          (m4-sensors-read, python-weather-station)
  notify  one Client, one notify
  twice   one Client, two calls          (what broke with the original proxy: StreamClosedError)
  fresh:N N calls, a new Client each     (what Arduino's examples do since "one call per RpcClient")
  threads:N N threads at once, a Client each, all with msgid 0 (crosstalk check)
The client timeout is $CALL_TIMEOUT seconds (default 5; msgpackrpc counts it in 1 s ticks).
Prints one line per call: "ok <repr(result)>" or "error <ExceptionClass> <message>".
"""

import json
import os
import sys
import threading

import msgpackrpc


def report(client_call):
    try:
        print(f"ok {client_call()!r}")
    except Exception as exc:  # print whatever the library raises: that is what is being tested
        print(f"error {type(exc).__name__} {exc}")
    sys.stdout.flush()


def main():
    host, port, mode, method = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    args = [json.loads(a) for a in sys.argv[5:]]
    address = msgpackrpc.Address(host, port)
    timeout = int(os.environ.get("CALL_TIMEOUT", "5"))
    if mode == "call":
        client = msgpackrpc.Client(address, timeout=timeout)
        report(lambda: client.call(method, *args))
    elif mode == "notify":
        client = msgpackrpc.Client(address, timeout=timeout)
        report(lambda: client.notify(method, *args))
    elif mode == "twice":
        client = msgpackrpc.Client(address, timeout=timeout)
        report(lambda: client.call(method, *args))
        report(lambda: client.call(method, *args))
    elif mode.startswith("fresh:"):
        for n in range(int(mode.split(":")[1])):
            fresh = msgpackrpc.Client(address, timeout=timeout)
            report(lambda fresh=fresh, n=n: fresh.call(method, *args, n))
            fresh.close()
    elif mode.startswith("threads:"):
        results = {}

        def one(n):
            try:
                results[n] = f"ok {msgpackrpc.Client(address, timeout=timeout).call(method, *args, n)!r}"
            except Exception as exc:
                results[n] = f"error {type(exc).__name__} {exc}"

        threads = [threading.Thread(target=one, args=(n,)) for n in range(int(mode.split(":")[1]))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for n in sorted(results):
            print(results[n])
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
