"""Inside a sandbox: relay TCP ports of the sandbox's own loopback to unix sockets the platform serves
outside, then run the command and exit with its code.

    python launch.py --forward 5000=/asgard/sockets/mlflow.sock -- python -u script.py

The sandbox has no network but its loopback: these relays are the only ways out, and the platform
decides on its side of each socket what may pass (asgard.core.sandbox). Standard library only: it
runs under whatever Python the sandbox was given.
"""

import contextlib
import socket
import subprocess
import sys
import threading


def pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


def relay(server: socket.socket, path: str) -> None:
    while True:
        client, _ = server.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(path)
        except OSError:
            client.close()
            continue
        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()


def main(argv: list[str]) -> int:
    separator = argv.index("--")
    options, command = argv[:separator], argv[separator + 1 :]
    for index, option in enumerate(options):
        if option == "--forward":
            port, path = options[index + 1].split("=", 1)
            server = socket.create_server(("127.0.0.1", int(port)))  # listening before the command starts
            threading.Thread(target=relay, args=(server, path), daemon=True).start()
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
