#!/usr/bin/env python3
"""A TLS client for tests/sni.rs (Python's ssl module, OpenSSL underneath).

Connects to ADDR, optionally sends a PROXY v1 header first, does the TLS handshake with
the given server name (none: no SNI extension at all), then sends REQUESTS HTTP/1.1
requests on the one connection, printing each response body on its own line. Before each
request after the first it waits for a line on stdin, so a test can hold the connection
open across a reload. With --bytewise the ClientHello goes out one byte per send()
(TCP_NODELAY: one TCP segment per byte).
"""
import argparse
import socket
import ssl
import sys

p = argparse.ArgumentParser()
p.add_argument("addr")
p.add_argument("--name")
p.add_argument("--bytewise", action="store_true")
p.add_argument("--proxy-v1", action="store_true")
p.add_argument("--tls", choices=["1.2", "1.3"])
p.add_argument("--requests", type=int, default=1)
a = p.parse_args()

host, port = a.addr.rsplit(":", 1)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
if a.tls == "1.2":
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
elif a.tls == "1.3":
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3

sock = socket.create_connection((host, int(port)), timeout=60)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
if a.proxy_v1:
    src_ip, src_port = sock.getsockname()
    sock.sendall(f"PROXY TCP4 {src_ip} {host} {src_port} {port}\r\n".encode())

incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(incoming, outgoing, server_hostname=a.name)


def flush(bytewise=False):
    data = outgoing.read()
    if bytewise:
        for i in range(len(data)):
            sock.send(data[i : i + 1])
    elif data:
        sock.sendall(data)


def pump():
    data = sock.recv(65536)
    if not data:
        raise SystemExit("closed by the peer")
    incoming.write(data)


first = True
while True:
    try:
        tls.do_handshake()
        break
    except ssl.SSLWantReadError:
        flush(a.bytewise and first)
        first = False
        pump()
flush()
print(tls.version(), file=sys.stderr, flush=True)

for i in range(a.requests):
    if i > 0:
        sys.stdin.readline()
    tls.write(f"GET / HTTP/1.1\r\nHost: {a.name or host}\r\n\r\n".encode())
    flush()
    raw = b""
    while True:
        try:
            raw += tls.read(65536)
        except ssl.SSLWantReadError:
            flush()
            pump()
            continue
        head, sep, body = raw.partition(b"\r\n\r\n")
        if sep:
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            if len(body) >= length:
                print(body[:length].decode().strip(), flush=True)
                break
