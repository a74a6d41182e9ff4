#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test
# (unit tests, the sql-tests/*.slt contract, the oracle property test,
# protocol, psql and JDBC tests, Postgres sink tests against a real
# PostgreSQL that scripts/postgres.sh installs and starts, Kafka tests
# against a real Apache Kafka that scripts/kafka.sh installs and starts).
set -euo pipefail
cd "$(dirname "$0")/.."

export EDDY_CACHE="${EDDY_CACHE:-$HOME/.cache/eddy}"
# Outside the clone, so that a fresh clone on the same machine reuses builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$EDDY_CACHE/target}"
export PGJDBC_VERSION="${PGJDBC_VERSION:-42.7.14}"
export EDDY_PGJDBC_JAR="${EDDY_PGJDBC_JAR:-$EDDY_CACHE/jdbc/postgresql-$PGJDBC_VERSION.jar}"
export EDDY_PYTHON_VENV="${EDDY_PYTHON_VENV:-$EDDY_CACHE/python-venv}"

scripts/install-test-deps.sh
# A real PostgreSQL on loopback for the sink tests.
scripts/postgres.sh start
export EDDY_TEST_PG_URL="${EDDY_TEST_PG_URL:-$(scripts/postgres.sh url)}"
# A real Apache Kafka (KRaft, from Maven Central) for the Kafka tests.
scripts/kafka.sh start
export EDDY_TEST_KAFKA="${EDDY_TEST_KAFKA:-$(scripts/kafka.sh bootstrap)}"
cargo test "$@"
