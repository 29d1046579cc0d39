"""The demo app against a real PostgreSQL (TLS verify-full) and a real Redis, both on loopback."""

from __future__ import annotations

import json
import subprocess
import time

import psycopg
import pytest

from tests.app.apptools import APP, DB_PASSWORD, NODE, SKIP, free_port
from tests.helpers import dotenv_text

pytestmark = [SKIP, pytest.mark.usefixtures("node_modules")]


def pg_sessions(postgres: dict, app_name: str) -> int:
    with psycopg.connect(postgres["admin"], autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
            "WHERE a.application_name = %s AND s.ssl",
            (app_name,),
        ).fetchone()[0]


def test_health_endpoints_real_figures(app_env, start_app, postgres):
    with psycopg.connect(postgres["admin"].replace("dbname=postgres", "dbname=ai_admin"), autocommit=True) as c:
        c.execute("DELETE FROM whatsapp_keys")
        c.execute("DELETE FROM whatsapp_auth")  # other tests' companies
        c.execute("INSERT INTO whatsapp_auth (company_id, creds) VALUES ('h1', '{}') ON CONFLICT DO NOTHING")
        c.execute("INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, expires_at, updated_at) VALUES "
                  "('h1','pre-key','1','{}', now() - interval '1 day', now()),"
                  "('h1','pre-key','2','{}', now() + interval '1 day', now() - interval '31 days'),"
                  "('h1','pre-key','3','{}', now() + interval '1 day', now())")
    api = start_app("ai-admin-api", app_env)
    api.wait_http()
    code, body = api.get("/health")
    assert code == 200
    assert set(body) >= {"status", "timestamp", "uptime", "database", "services"}
    assert body["database"] == "connected"
    assert body["services"] == {"whatsapp": "disconnected", "database": "connected", "redis": "connected"}
    assert body["status"] == "degraded"  # nobody holds the WhatsApp session
    code, body = api.get("/health/database")
    assert code == 200 and body["status"] == "healthy" and body["backend"] == "postgresql"
    assert body["ssl"] is True and body["latency"] >= 0
    assert body["pool"]["total"] == 3 and body["pool"]["waiting"] == 0
    code, body = api.get("/health/whatsapp")
    assert code == 200
    assert (body["auth_records"], body["total_keys"], body["expired_keys"]) == (1, 3, 2)
    assert body["thresholds"] == {"warning": 100, "critical": 250}
    assert body["status"] == "healthy" and body["last_check"]


def test_pool_opened_eagerly_with_application_name(app_env, start_app, postgres):
    app_env["POSTGRES_MAX_CONNECTIONS"] = "4"
    worker = start_app("ai-admin-worker-v2", app_env)
    worker.wait_log("ready")
    deadline = time.monotonic() + 10
    while pg_sessions(postgres, "ai-admin-worker-v2") < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pg_sessions(postgres, "ai-admin-worker-v2") == 4
    worker.stop()


def test_unknown_role_is_a_generic_worker(app_env, start_app, postgres):
    app = start_app("some-future-service", app_env)
    app.wait_log("ready")
    assert app.proc.poll() is None


def test_whatsapp_single_writer(app_env, start_app, postgres):
    first = start_app("baileys-whatsapp-service", app_env)
    first.wait_log("WhatsApp session lock acquired")
    second_env = dict(app_env, REDIS_PORT=str(free_port()))  # and no Redis: must still exit non-zero
    second = start_app("baileys-whatsapp-service", second_env)
    assert second.proc.wait(timeout=30) != 0
    out = second.output()
    assert "another host holds the WhatsApp session lock" in out
    api = start_app("ai-admin-api", app_env)
    api.wait_http()
    code, body = api.get("/health")
    assert code == 200 and body["services"]["whatsapp"] == "connected" and body["status"] == "healthy"
    # The lock goes with the process: a new one takes over once the first stops.
    first.stop()
    third = start_app("baileys-whatsapp-service", dict(app_env, AIADMIN_LOCK_WAIT_SECONDS="10"))
    third.wait_log("WhatsApp session lock acquired")


def test_redis_password_checked(app_env, start_app):
    api = start_app("ai-admin-api", dict(app_env, REDIS_PASSWORD="wrong"))
    api.wait_http()
    code, body = api.get("/health")
    assert code == 503 and body["services"]["redis"] == "disconnected" and body["status"] == "unhealthy"


def test_wrong_ca_refused(app_env, start_app, tls):
    api = start_app("ai-admin-api", dict(app_env, PGSSLROOTCERT=str(tls["other_ca"])))
    api.wait_http()
    code, body = api.get("/health/database")
    assert code == 503 and body["status"] == "unhealthy"
    assert "certificate" in body["error"]
    code, body = api.get("/health")
    assert code == 503 and body["database"] == "disconnected"


def test_database_down_then_back(app_env, start_app, postgres):
    api = start_app("ai-admin-api", dict(app_env, POSTGRES_PORT=str(free_port()), POSTGRES_CONNECTION_TIMEOUT="1000"))
    api.wait_http()
    code, body = api.get("/health")
    assert code == 503 and body["database"] == "disconnected" and body["services"]["redis"] == "connected"


def test_crash_on_start_flag(app_env, start_app):
    app = start_app("ai-admin-api", app_env, extra_env={"AIADMIN_DEMO_CRASH_ON_START": "1"})
    assert app.proc.wait(timeout=20) == 1
    assert "built to crash at start" in app.output()


HOSTILE = [DB_PASSWORD, "", " lead and trail ", "a=b==c", "#not a comment", "x # y", "line\nbreak", "cr\rhere",
           "ünïcødé ✓ 日本", "${HOME} $(id) `id`", "'single'", '"double"', "both ' and \"", "`tick` and '",
           "ends with backslash \\", "literal \\n and '", "\\", "tab\there", "  ", "=", "'", '"', "`",
           "multi\nline 'q' \"d\"", "export X=1", "KEY=VALUE"]
DOTENV_PARSE = "process.stdout.write(JSON.stringify(require('dotenv').parse(require('fs').readFileSync(0))))"


def dotenv_parse(text: str) -> dict:
    """The real dotenv 16 (the app's dependency) parsing text, as the app's config() does."""
    out = subprocess.run([NODE, "-e", DOTENV_PARSE], input=text.encode(), cwd=APP, capture_output=True, check=True)
    return json.loads(out.stdout)


def test_every_hostile_value_reads_back_through_dotenv():
    values = {f"K{n}": v for n, v in enumerate(HOSTILE)}
    assert dotenv_parse("# c\n\n" + dotenv_text(values)) == values


@pytest.mark.parametrize("value", ["all ' three ` \"", "cr\r and \"", "literal \\n with \" and ' and `"])
def test_a_value_dotenv_cannot_carry_is_refused_naming_the_key_only(value):
    import importlib.util

    from ansible.errors import AnsibleFilterError

    from tests.helpers import ROOT

    spec = importlib.util.spec_from_file_location("dotenv_filter", ROOT / "roles/app/filter_plugins/dotenv.py")
    filters = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(filters)
    assert filters.dotenv_uncarried({"GOOD": "x'y", "BAD_ONE": value, "bad key": "v"}) == ["BAD_ONE", "bad key"]
    with pytest.raises(AnsibleFilterError) as err:
        filters.dotenv_quote(value, "BAD_ONE")
    assert "BAD_ONE" in str(err.value) and value not in str(err.value)


def test_env_template_round_trips_lab_secrets_through_dotenv():
    """The role's own template, rendered by Ansible's Jinja (with the role's filter) with the lab
    vault's secrets, parsed by the real dotenv."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.loader import filter_loader
    from ansible.template import Templar, trust_as_template

    from tests.helpers import ROOT, lab_vault

    vault = lab_vault()
    secret = vault["vault_aiadmin_db_password"]
    assert any(c in secret for c in "}|<?%$'\"#\\ ")
    filter_loader.add_directory(str(ROOT / "roles/app/filter_plugins"))
    template = (ROOT / "roles/app/templates/env.j2").read_text()
    values = {k.removeprefix("vault_").upper(): str(v) for k, v in vault.items() if isinstance(v, (str, int))}
    values.update(NODE_ENV="production", SPACES=" x y ")
    rendered = Templar(loader=DataLoader(), variables={
        "ansible_managed": "managed", "_app_env": values,
    }).template(trust_as_template(template))
    assert dotenv_parse(rendered) == values
