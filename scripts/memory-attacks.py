#!/usr/bin/env python3
"""Peak RSS of an eddy release binary under each memory attack of issue 29
(a 400 MB query literal, a message declaring 1 GB, repeat() of 1.5 GB, a
16M-row result, an endless HTTP request line), for comparing builds.

usage: scripts/memory-attacks.py BINARY [attack ...]
Each attack runs against a fresh eddy (its own data dir, loopback ports);
prints the attack, what the server answered and VmHWM (peak RSS) in MB.
"""
import os, socket, struct, subprocess, sys, tempfile, time


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def start(binary):
    d = tempfile.mkdtemp(prefix="eddy-m29-")
    pg, http = free_port(), free_port()
    proc = subprocess.Popen([binary, "--listen", f"127.0.0.1:{pg}", "--http-listen", f"127.0.0.1:{http}",
                             "--data-dir", d, "--checkpoint-interval", "0"],
                            stdout=subprocess.DEVNULL, stderr=open(d + ".log", "w"))
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", pg), timeout=1).close(); break
        except OSError:
            time.sleep(0.1)
    return proc, pg, http


def hwm_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) // 1024
    return -1


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return -1


def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    body = struct.pack("!I", 196608) + b"user\0eddy\0database\0eddy\0\0"
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    read_until_ready(s)
    return s


def read_until_ready(s, limit=None):
    """Reads messages until ReadyForQuery; returns (first error text, rows)."""
    error, rows, buf = None, 0, b""
    while True:
        while len(buf) < 5:
            chunk = s.recv(1 << 20)
            if not chunk:
                return error or "connection closed", rows
            buf += chunk
        kind, length = buf[0:1], struct.unpack("!I", buf[1:5])[0]
        while len(buf) < 1 + length:
            chunk = s.recv(1 << 20)
            if not chunk:
                return error or "connection closed", rows
            buf += chunk
        body, buf = buf[5:1 + length], buf[1 + length:]
        if kind == b"E" and error is None:
            fields = dict((f[:1], f[1:]) for f in body.split(b"\0") if f)
            error = (fields.get(b"C", b"") + b" " + fields.get(b"M", b"")[:80]).decode(errors="replace")
        elif kind == b"D":
            rows += 1
        elif kind == b"Z":
            return error or "ok", rows


def query(s, sql):
    s.sendall(b"Q" + struct.pack("!I", len(sql) + 5) + sql + b"\0")
    return read_until_ready(s)


def attack_literal(pg, http):
    s = connect(pg)
    return query(s, b"SELECT length('" + b"x" * (400 << 20) + b"')")


def attack_declared(pg, http):
    s = connect(pg)
    try:
        s.sendall(b"Q" + struct.pack("!I", 1 << 30))
        chunk = b"x" * (1 << 20)
        for _ in range(900):
            s.sendall(chunk)
    except OSError as e:
        return f"closed while sending: {e}", 0
    s.settimeout(30)
    try:
        return read_until_ready(s)
    except Exception as e:
        return f"{e}", 0


def attack_repeat(pg, http):
    s = connect(pg)
    return query(s, b"SELECT length(repeat('x', 1500000000))")


def attack_big_result(pg, http):
    s = connect(pg)
    return query(s, b"SELECT v FROM generate_series(1, 16000000) AS g(v)")


def attack_http(pg, http):
    s = socket.create_connection(("127.0.0.1", http))
    sent = 0
    try:
        chunk = b"A" * (1 << 20)
        t0 = time.time()
        while sent < (1 << 30) and time.time() - t0 < 15:
            s.sendall(chunk)
            sent += len(chunk)
    except OSError as e:
        return f"closed after {sent >> 20} MB: {e.__class__.__name__}", 0
    return f"accepted {sent >> 20} MB", 0


ATTACKS = {"literal400MB": attack_literal, "declared1GB": attack_declared, "repeat1.5G": attack_repeat,
           "result16Mrows": attack_big_result, "http_no_newline": attack_http}

if __name__ == "__main__":
    binary = sys.argv[1]
    names = sys.argv[2:] or list(ATTACKS)
    for name in names:
        proc, pg, http = start(binary)
        base = rss_mb(proc.pid)
        t0 = time.time()
        try:
            answer = ATTACKS[name](pg, http)
        except Exception as e:
            answer = (f"client error {e}", 0)
        took = time.time() - t0
        time.sleep(1)
        alive = proc.poll() is None
        peak = hwm_mb(proc.pid) if alive else -1
        # A healthy client afterwards.
        try:
            ok = query(connect(pg), b"SELECT 1")[0] if alive else "dead"
        except Exception as e:
            ok = f"error {e}"
        print(f"{name:16} answer={answer} took={took:.1f}s base_rss={base}MB peak_rss={peak}MB alive={alive} then SELECT 1: {ok}", flush=True)
        proc.terminate(); proc.wait()
