#!/usr/bin/env python3
"""Measures pylon's resident memory (RSS) per idle client connection: the figure in the README.

    scripts/rss-per-connection.py [PYLON_BINARY] [CONNECTIONS] [--push tcp|tls|ws]

Defaults: target/release/pylon, 5000. Opens the connections in four steps, on a pylon proxying
to a local upstream, and prints the RSS at each step and the cost of each added connection:
once for connections idle after one request (kept alive), once for connections that have not
sent one yet.

With `--push`, the connections are devices of a push gateway instead (a `pylon-push` stream
route on a Redis this script starts, `redis-server` on the PATH): each sends its `auth` frame
and waits for `auth_ok`, then stays idle (its heartbeat is minutes away). `tls`: the stream
listener terminates TLS (a certificate made with `openssl`), and the devices speak TLS 1.3.
`ws`: the devices open with a WebSocket handshake and send their `auth` as a text message.

Loopback only; it stops everything it started. Each connection takes a file descriptor here and
one in pylon: CONNECTIONS must stay below `ulimit -n`.
"""
import base64
import http.server
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

MIB = 1024 * 1024


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        # One write: the head and body apart would meet Nagle and delayed ACKs (40 ms each).
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    def log_message(self, *args):
        pass


def start_pylon(binary, upstream_port, directory):
    with open(os.path.join(directory, "apisix.yaml"), "w") as f:
        f.write(
            "routes:\n  - {id: r, uri: /*, upstream: {nodes: {\"127.0.0.1:%d\": 1}}}\n#END\n"
            % upstream_port
        )
    with open(os.path.join(directory, "node.yaml"), "w") as f:
        f.write(
            "proxy:\n  listen: [\"127.0.0.1:0\"]\n  workers: 2\n  https:\n    listen: []\n"
            "  handoff_socket: \"\"\naccess_log:\n  enabled: false\ncontrol:\n  enabled: false\n"
            "config:\n  source: yaml\n  file: apisix.yaml\n"
        )
    return run_pylon(binary, directory, "pylon: proxy listening on http://")


def run_pylon(binary, directory, listening):
    """Starts pylon on `directory`'s node.yaml: the process, and the address of the first
    listener whose startup line starts with `listening`."""
    proc = subprocess.Popen(
        [binary, "run", "-c", os.path.join(directory, "node.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    addr = None
    for line in proc.stdout:
        if addr is None and line.startswith(listening):
            host, port = line.strip().rsplit("/", 1)[1].rsplit(":", 1)
            addr = (host, int(port))
        if " worker(s); " in line:
            return proc, addr
    raise SystemExit("pylon did not start")


def rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("no VmRSS for pid %d" % pid)


def request(sock):
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not data.endswith(b"hello"):
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("pylon closed a connection")
        data += chunk


def measure(binary, upstream_port, n, send_request):
    with tempfile.TemporaryDirectory() as directory:
        proc, addr = start_pylon(binary, upstream_port, directory)
        try:
            # Warm up the upstream pool, the allocator and the runtimes.
            for _ in range(200):
                with socket.create_connection(addr, timeout=5) as s:
                    request(s)
            def connect(_):
                s = socket.create_connection(addr, timeout=5)
                if send_request:
                    request(s)
                return s

            return rss_steps(proc.pid, n, connect)
        finally:
            proc.terminate()
            proc.wait()


def rss_steps(pid, n, connect):
    """Opens `n` connections (`connect(index)` opens one) in four steps, after a second's
    rest; the RSS before and after each step, as (connections, bytes). Closes them."""
    time.sleep(1)
    points = [(0, rss(pid))]
    conns = []
    try:
        for target in range(n // 4, n + 1, n // 4):
            while len(conns) < target:
                conns.append(connect(len(conns)))
            time.sleep(1)
            points.append((target, rss(pid)))
    finally:
        for s in conns:
            s.close()
    return points


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(directory):
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def start_push_gateway(binary, redis_port, directory, tls):
    conf = {"redis": {"policy": "redis", "redis_host": "127.0.0.1", "redis_port": redis_port}}
    doc = {
        "consumers": [{"username": "phone", "plugins": {"key-auth": {"key": "device-key"}}}],
        "stream_routes": [{"id": "devices", "plugins": {"key-auth": {}},
                           "protocol": {"name": "pylon-push", "conf": conf}}],
    }
    if tls:
        cert, key = (os.path.join(directory, name) for name in ("cert.pem", "key.pem"))
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=push.test",
             "-addext", "subjectAltName=DNS:push.test"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        doc["ssls"] = [{"id": "push", "snis": ["push.test"],
                        "cert": open(cert).read(), "key": open(key).read()}]
    with open(os.path.join(directory, "apisix.yaml"), "w") as f:
        f.write(json.dumps(doc) + "\n#END\n")
    with open(os.path.join(directory, "node.yaml"), "w") as f:
        f.write(
            "proxy:\n  listen: [\"127.0.0.1:0\"]\n  workers: 2\n  https:\n    listen: []\n"
            "  max_connections_per_worker: 20000\n"
            "  handoff_socket: \"\"\n  stream:\n    tcp: [{addr: \"127.0.0.1:0\", tls: %s}]\n"
            "access_log:\n  enabled: false\ncontrol:\n  enabled: false\n"
            "config:\n  source: yaml\n  file: apisix.yaml\n" % ("true" if tls else "false")
        )
    return run_pylon(binary, directory, "pylon: stream listening on tcp")


def frame(command, body):
    """A frame of the push gateway's default layout: body length, command, sequence."""
    return struct.pack(">IBI", len(body), command, 1) + body


def recv_exact(sock, n, index):
    """Reads `n` bytes from device `index`'s socket; pylon closing it first ends the run."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise SystemExit("pylon closed device %d before auth_ok" % index)
        data += chunk
    return data


def ws_device(sock, index):
    """Opens a WebSocket and authenticates with a text message."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((
        "GET /devices HTTP/1.1\r\nHost: push.test\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key
    ).encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += recv_exact(sock, 1, index)
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit("device %d: no WebSocket: %r" % (index, head))
    auth = {"type": "auth", "token": "device-key", "device_id": "d%d" % index, "app_id": "rss"}
    payload = json.dumps(auth).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    length = bytes([0x80 | len(payload)]) if len(payload) < 126 else \
        bytes([0x80 | 126]) + struct.pack(">H", len(payload))
    sock.sendall(bytes([0x81]) + length + mask + masked)
    header = recv_exact(sock, 2, index)
    n = header[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", recv_exact(sock, 2, index))[0]
    answer = json.loads(recv_exact(sock, n, index))
    if answer.get("type") != "auth_ok":
        raise SystemExit("device %d was refused: %s" % (index, answer))
    return sock


def device(addr, context, index, websocket=False):
    """A device connected and authenticated: its socket, kept open."""
    sock = socket.create_connection(addr, timeout=10)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname="push.test")
    if websocket:
        return ws_device(sock, index)
    auth = {"token": "device-key", "device_id": "d%d" % index, "app_id": "rss"}
    sock.sendall(frame(1, json.dumps(auth).encode()))
    length, command, _ = struct.unpack(">IBI", recv_exact(sock, 9, index))
    body = recv_exact(sock, length, index)
    if command != 2:
        raise SystemExit("device %d was refused: %s" % (index, body))
    return sock


def measure_push(binary, n, transport):
    tls, websocket = transport == "tls", transport == "ws"
    with tempfile.TemporaryDirectory() as directory:
        redis, redis_port = start_redis(directory)
        proc, addr = start_push_gateway(binary, redis_port, directory, tls)
        context = None
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            # Warm up the allocator and the runtimes with devices that come and go.
            for i in range(200):
                device(addr, context, n + i, websocket).close()
            return rss_steps(proc.pid, n, lambda i: device(addr, context, i, websocket))
        finally:
            proc.terminate()
            proc.wait()
            redis.terminate()
            redis.wait()


def report(label, points):
    print("%s: %s" % (label, ", ".join(
        "%d connections %.1f MiB" % (c, r / MIB) for c, r in points)))
    print("  bytes per added connection: %s" % ", ".join(
        "%.0f" % ((b[1] - a[1]) / (b[0] - a[0])) for a, b in zip(points, points[1:])))


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    push = None
    if "--push" in sys.argv:
        at = sys.argv.index("--push")
        push = sys.argv[at + 1] if at + 1 < len(sys.argv) else "tcp"
        if push in args:
            args.remove(push)
        if push not in ("tcp", "tls", "ws"):
            raise SystemExit("--push takes tcp, tls or ws")
    binary = args[0] if len(args) > 0 else "target/release/pylon"
    n = int(args[1]) if len(args) > 1 else 5000
    if push:
        report("push devices (%s), idle after auth" % push, measure_push(binary, n, push))
        return
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        for label, send_request in [("idle after a request", True), ("no request yet", False)]:
            report(label, measure(binary, upstream.server_address[1], n, send_request))
    finally:
        upstream.shutdown()


if __name__ == "__main__":
    main()
