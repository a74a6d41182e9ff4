#!/usr/bin/env bash
# Installs, idempotently, what eddy's tests need beyond Rust itself:
#  - a C toolchain (gcc, make, pkg-config) and zlib for native crates;
#  - psql (postgresql-client), to test eddy with the real psql;
#  - Java 17 and Maven, and the PostgreSQL JDBC driver from Maven Central,
#    to test eddy with a real JDBC client;
#  - Python 3 with a venv holding SQLAlchemy and psycopg from PyPI, to test
#    eddy with the client libraries BI tools and notebooks use, and
#    Selenium, to drive headless Chromium (chromium and chromium-driver from
#    Debian) over eddy's web page;
#  - openssl, to make the test CA and certificates of the TLS tests, and
#    curl, to test the web page over HTTPS.
# Safe to run again: each step checks first.
set -euo pipefail

PGJDBC_VERSION="${PGJDBC_VERSION:-42.7.14}"
EDDY_CACHE="${EDDY_CACHE:-$HOME/.cache/eddy}"
export EDDY_PGJDBC_JAR="${EDDY_PGJDBC_JAR:-$EDDY_CACHE/jdbc/postgresql-$PGJDBC_VERSION.jar}"
EDDY_PYTHON_VENV="${EDDY_PYTHON_VENV:-$EDDY_CACHE/python-venv}"
PYTHON_PACKAGES=("sqlalchemy==2.0.58" "psycopg[binary]==3.2.13" "selenium==4.51.0")

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-test-deps: cargo is missing; install Rust (rustup) first" >&2
  exit 1
fi

missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
[ -e /usr/include/zlib.h ] || missing+=(zlib1g-dev)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-test-deps: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi

if [ ! -s "$EDDY_PGJDBC_JAR" ]; then
  echo "install-test-deps: fetching the PostgreSQL JDBC driver $PGJDBC_VERSION"
  mkdir -p "$(dirname "$EDDY_PGJDBC_JAR")"
  mvn -q -B dependency:copy -Dartifact="org.postgresql:postgresql:$PGJDBC_VERSION" \
    -DoutputDirectory="$(dirname "$EDDY_PGJDBC_JAR")"
fi
if ! "$EDDY_PYTHON_VENV/bin/python" -c "import sqlalchemy, psycopg, selenium" >/dev/null 2>&1; then
  echo "install-test-deps: installing ${PYTHON_PACKAGES[*]} into $EDDY_PYTHON_VENV"
  python3 -m venv "$EDDY_PYTHON_VENV"
  "$EDDY_PYTHON_VENV/bin/pip" install -q "${PYTHON_PACKAGES[@]}"
fi
echo "install-test-deps: ready (JDBC driver at $EDDY_PGJDBC_JAR, Python at $EDDY_PYTHON_VENV)"
