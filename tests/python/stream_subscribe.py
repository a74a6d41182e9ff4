"""psycopg 3's cursor.stream("SUBSCRIBE ...") against eddy, the way
Materialize documents streaming a view's changes to Python: the snapshot,
then a change made by another connection while the stream runs.

Usage: python stream_subscribe.py <port>   (the schema is made by tests/python.rs)
"""
import sys

import psycopg


def main(port: str) -> None:
    url = f"postgresql://eddy@127.0.0.1:{port}/eddy"
    with psycopg.connect(url, autocommit=True) as writer, psycopg.connect(url, autocommit=True) as reader:
        seen = []
        with reader.cursor() as cursor:
            for row in cursor.stream("SUBSCRIBE per_customer"):
                customer, n, total, op, epoch = row
                seen.append((customer, n, total, op))
                if len(seen) == 2:
                    # The snapshot is in: change the view while streaming.
                    assert sorted(seen) == [("ann", 2, 15, "insert"), ("bob", 1, 7, "insert")], seen
                    writer.execute("INSERT INTO orders VALUES (4, 'cid', 3)")
                if (customer, op) == ("cid", "insert"):
                    assert (n, total) == (1, 3), row
                    break
    print("stream ok")


if __name__ == "__main__":
    main(sys.argv[1])
