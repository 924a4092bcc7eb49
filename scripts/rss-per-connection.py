#!/usr/bin/env python3
"""Measures pylon's resident memory (RSS) per idle client connection: the figure in the README.

    scripts/rss-per-connection.py [PYLON_BINARY] [CONNECTIONS]

Defaults: target/release/pylon, 5000. Opens the connections in four steps, on a pylon proxying
to a local upstream, and prints the RSS at each step and the cost of each added connection:
once for connections idle after one request (kept alive), once for connections that have not
sent one yet. Loopback only; it stops everything it started. Each connection takes a file
descriptor here and one in pylon: CONNECTIONS must stay below `ulimit -n`.
"""
import http.server
import os
import socket
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
    proc = subprocess.Popen(
        [binary, "run", "-c", os.path.join(directory, "node.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    addr = None
    for line in proc.stdout:
        if line.startswith("pylon: proxy listening on http://"):
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
            time.sleep(1)
            points = [(0, rss(proc.pid))]
            conns = []
            for target in range(n // 4, n + 1, n // 4):
                while len(conns) < target:
                    s = socket.create_connection(addr, timeout=5)
                    if send_request:
                        request(s)
                    conns.append(s)
                time.sleep(1)
                points.append((target, rss(proc.pid)))
            for s in conns:
                s.close()
            return points
        finally:
            proc.terminate()
            proc.wait()


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/pylon"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        for label, send_request in [("idle after a request", True), ("no request yet", False)]:
            points = measure(binary, upstream.server_address[1], n, send_request)
            print("%s: %s" % (label, ", ".join(
                "%d connections %.1f MiB" % (c, r / MIB) for c, r in points)))
            print("  bytes per added connection: %s" % ", ".join(
                "%.0f" % ((b[1] - a[1]) / (b[0] - a[0])) for a, b in zip(points, points[1:])))
    finally:
        upstream.shutdown()


if __name__ == "__main__":
    main()
