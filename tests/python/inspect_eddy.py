"""SQLAlchemy's inspector over psycopg against eddy, as Superset and notebooks
use it: table, view and materialized-view names, each relation's columns,
then a parameterized query. (Not yet: get_pk_constraint, whose query casts
to regclass inside an aggregate eddy does not plan.)

Usage: python inspect_eddy.py <port>   (the schema is made by tests/python.rs)
"""
import sys

from sqlalchemy import create_engine, inspect, text


def main(port: str) -> None:
    engine = create_engine(f"postgresql+psycopg://eddy@127.0.0.1:{port}/eddy")
    inspector = inspect(engine)
    tables = inspector.get_table_names()
    assert tables == ["orders"], tables
    views = inspector.get_view_names()
    assert views == [], views
    matviews = inspector.get_materialized_view_names()
    assert matviews == ["per_customer"], matviews
    assert inspector.has_table("orders")
    columns = [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns("orders")]
    assert columns == [("id", "BIGINT", False), ("customer", "TEXT", True),
                       ("amount", "INTEGER", True)], columns
    columns = [(c["name"], str(c["type"])) for c in inspector.get_columns("per_customer")]
    assert columns == [("customer", "TEXT"), ("n", "BIGINT"), ("total", "BIGINT")], columns
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT customer, n, total FROM per_customer WHERE total > :floor ORDER BY customer"),
            {"floor": 1},
        ).all()
    assert [tuple(r) for r in rows] == [("ann", 2, 15), ("bob", 1, 7)], rows
    print("sqlalchemy ok")


if __name__ == "__main__":
    main(sys.argv[1])
