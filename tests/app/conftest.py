"""Fixtures for the demo app tests (real PostgreSQL with TLS, real Redis, the app's processes)."""

from tests.app.apptools import (  # noqa: F401 - fixtures
    app_env,
    lab_db,
    node_modules,
    postgres,
    redis_server,
    start_app,
    tls,
    workdir,
)
