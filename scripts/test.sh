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

# The target directory is shared by every clone and build on the machine;
# builds with other flags, profiles or sources leave outputs behind (test
# binaries of ~400 MB each), which once filled the disk. Outputs no build
# has read for three days go (relatime updates access times at least
# daily); cargo rebuilds any it needs again.
for profile in debug release; do
    for dir in deps incremental; do
        if [ -d "$CARGO_TARGET_DIR/$profile/$dir" ]; then
            find "$CARGO_TARGET_DIR/$profile/$dir" -mindepth 1 -maxdepth 1 -atime +3 \
                -exec rm -rf {} +
        fi
    done
done
scripts/install-test-deps.sh
# A real PostgreSQL on loopback for the sink tests.
scripts/postgres.sh start
export EDDY_TEST_PG_URL="${EDDY_TEST_PG_URL:-$(scripts/postgres.sh url)}"
# A real Apache Kafka (KRaft, from Maven Central) for the Kafka tests.
scripts/kafka.sh start
export EDDY_TEST_KAFKA="${EDDY_TEST_KAFKA:-$(scripts/kafka.sh bootstrap)}"
cargo test "$@"
