"""Small programs of one I/O style each, for zctrace's style and advice tests.

Each moves a known volume the way real programs of its kind do, then exits:
  file-relay FILE HOST:PORT     reads a file into a buffer and sends that buffer (a naive file server)
  socket-relay HOST:PORT BYTES  relays what a TCP peer (a child it forks) sends to HOST:PORT
  kv-server REQUESTS            answers GETs from memory and takes SETs (a key-value store), for a
                                client child that pipelines nothing: one request, one reply
  udp-sender HOST:PORT COUNT    sends COUNT datagrams of 1400 bytes
  file-reader FILE              reads a file into memory
  socket-to-file FILE BYTES     writes to a new FILE what a TCP peer (a child it forks) sends
  forking-relay HOST:PORT N     a listener that prints its address, then forks a child for each of
                                N connections, which relays it to HOST:PORT (the parent moves none)
The children it forks are other processes: `attach -- python3 styles.py ...` traces only it.
"""
import os
import socket
import sys

CHUNK = 64 * 1024


def address(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def file_relay(path, to):
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as source, socket.create_connection(address(to)) as out:
        while True:
            n = source.readinto(buffer)
            if not n:
                break
            out.sendall(view[:n])


def peer_sends(total):
    """A listening socket whose one peer, a forked child, sends `total` bytes and exits."""
    listener = socket.create_server(("127.0.0.1", 0))
    if os.fork() == 0:
        with socket.create_connection(listener.getsockname()) as peer:
            block = b"x" * CHUNK
            left = total
            while left:
                left -= peer.send(block[: min(left, CHUNK)])
        os._exit(0)
    connection, _ = listener.accept()
    listener.close()
    return connection


def socket_relay(to, total):
    relay(peer_sends(total), to)
    os.wait()


VALUE = b"v" * 1024


def kv_client(peer, requests):
    for i in range(requests):
        if i % 2:
            request = b"GET key\n"
        else:
            request = b"SET key " + VALUE + b"\n"
        peer.sendall(request)
        expected = len(VALUE) if i % 2 else 3
        got = 0
        while got < expected:
            got += len(peer.recv(expected - got))


def kv_server(requests):
    listener = socket.create_server(("127.0.0.1", 0))
    if os.fork() == 0:
        with socket.create_connection(listener.getsockname()) as peer:
            kv_client(peer, requests)
        os._exit(0)
    connection, _ = listener.accept()
    store = {}
    buffer = bytearray(4096)
    pending = b""
    while True:
        n = connection.recv_into(buffer)
        if not n:
            break
        pending += bytes(buffer[:n])
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.startswith(b"SET "):
                _, key, value = line.split(b" ", 2)
                store[key] = value
                connection.sendall(b"+OK")
            else:
                connection.sendall(store[line.split(b" ", 1)[1]])
    os.wait()


def udp_sender(to, count):
    datagram = b"d" * 1400
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        for _ in range(count):
            out.sendto(datagram, address(to))


def file_reader(path):
    kept = []
    with open(path, "rb", buffering=0) as source:
        while True:
            block = source.read(CHUNK)
            if not block:
                break
            kept.append(block)
    return len(kept)


def socket_to_file(path, total):
    source = peer_sends(total)
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "xb", buffering=0) as out:
        while True:
            n = source.recv_into(buffer)
            if not n:
                break
            out.write(view[:n])
    os.wait()


def relay(source, to):
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with socket.create_connection(address(to)) as out:
        while True:
            n = source.recv_into(buffer)
            if not n:
                break
            out.sendall(view[:n])


def forking_relay(to, connections):
    listener = socket.create_server(("127.0.0.1", 0))
    host, port = listener.getsockname()
    print(f"listening on {host}:{port}", flush=True)
    for _ in range(connections):
        connection, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            relay(connection, to)
            os._exit(0)
        connection.close()
    for _ in range(connections):
        os.wait()


def main(argv):
    style, args = argv[1], argv[2:]
    if style == "file-relay":
        file_relay(args[0], args[1])
    elif style == "socket-relay":
        socket_relay(args[0], int(args[1]))
    elif style == "kv-server":
        kv_server(int(args[0]))
    elif style == "udp-sender":
        udp_sender(args[0], int(args[1]))
    elif style == "file-reader":
        file_reader(args[0])
    elif style == "socket-to-file":
        socket_to_file(args[0], int(args[1]))
    elif style == "forking-relay":
        forking_relay(args[0], int(args[1]))
    else:
        sys.exit(f"styles.py: no style {style!r}")


if __name__ == "__main__":
    main(sys.argv)
