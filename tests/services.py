"""Real PostgreSQL and Redis servers for the storage and limit tests.

``ROUTE_LLM_TEST_POSTGRES_URL`` / ``ROUTE_LLM_TEST_REDIS_URL`` name running servers; otherwise the first test that
needs them starts both with ``scripts/local_services.py`` (Debian's postgresql and redis-server, on loopback, in a
temporary directory) and stops them at the end of the session. Where the packages or the Python drivers (the
``postgres`` and ``redis`` extras) are missing, those tests are skipped and say why; with
``ROUTE_LLM_TEST_SERVICES=required`` (as ``.ci/run`` sets) they fail instead, so CI cannot pass by skipping them.

Each test gets a database of its own: a fresh schema, named in the URL's ``search_path``, that the proxy creates
its tables in; and a fresh Redis database number, flushed before the test.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "local_services.py"


@dataclass
class Services:
    postgres_url: str | None
    redis_url: str | None
    problem: str | None = None  # why they are not available

    def need(self, what: str) -> str:
        url = self.postgres_url if what == "postgresql" else self.redis_url
        module = "psycopg" if what == "postgresql" else "redis"
        reason = self.problem
        if reason is None and importlib.util.find_spec(module) is None:
            extra = "postgres" if what == "postgresql" else "redis"
            reason = f"the {module} package is not installed (pip install -e '.[{extra}]')"
        if reason is not None or url is None:
            reason = f"{what} not available: {reason}"
            if os.environ.get("ROUTE_LLM_TEST_SERVICES") == "required":
                pytest.fail(reason + " (ROUTE_LLM_TEST_SERVICES=required)")
            pytest.skip(reason)
        return url


def start_services() -> Iterator[Services]:
    env_pg, env_redis = os.environ.get("ROUTE_LLM_TEST_POSTGRES_URL"), os.environ.get("ROUTE_LLM_TEST_REDIS_URL")
    if env_pg and env_redis:
        yield Services(env_pg, env_redis)
        return
    if not any(importlib.util.find_spec(m) for m in ("psycopg", "redis")):  # nothing could talk to them
        yield Services(None, None, "neither psycopg nor redis is installed (pip install -e '.[postgres,redis]')")
        return
    root = Path(tempfile.mkdtemp(prefix="route-llm-services-"))
    done = subprocess.run([sys.executable, str(SCRIPT), "start", str(root)], capture_output=True, text=True)
    if done.returncode != 0:
        yield Services(None, None, (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1])
        return
    urls = dict(line.split("=", 1) for line in done.stdout.split())
    try:
        yield Services(urls["ROUTE_LLM_TEST_POSTGRES_URL"], urls["ROUTE_LLM_TEST_REDIS_URL"])
    finally:
        subprocess.run([sys.executable, str(SCRIPT), "stop", str(root)], capture_output=True)


def fresh_schema(postgres_url: str) -> str:
    """A URL whose tables land in a new, empty schema of the test database."""
    import psycopg

    schema = "t_" + secrets.token_hex(6)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{postgres_url}?options=-csearch_path%3D{schema}"


_redis_db = iter(range(1, 16))


def fresh_redis(redis_url: str) -> str:
    """A URL of an emptied Redis database (numbers 1-15 in turn; 0 is left to the services' own use)."""
    import redis

    global _redis_db
    try:
        n = next(_redis_db)
    except StopIteration:
        _redis_db = iter(range(1, 16))
        n = next(_redis_db)
    url = redis_url.rsplit("/", 1)[0] + f"/{n}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url
