"""psycopg 3 over TLS with SCRAM-SHA-256: verify-full against the test CA.

Usage: python tls_connect.py <port> <ca.pem> <password>
"""
import sys

import psycopg

port, ca, password = sys.argv[1], sys.argv[2], sys.argv[3]
dsn = f"host=127.0.0.1 port={port} user=eddy dbname=eddy sslmode=verify-full sslrootcert={ca}"
with psycopg.connect(dsn, password=password, autocommit=True) as conn:
    assert conn.info.pgconn.ssl_in_use, "not TLS"
    (user,) = conn.execute("SELECT current_user").fetchone()
    assert user == "eddy", user
try:
    psycopg.connect(dsn, password="wrong", autocommit=True)
    raise AssertionError("a wrong password was accepted")
except psycopg.OperationalError as e:
    assert "password authentication failed" in str(e), e
print("psycopg tls ok")
