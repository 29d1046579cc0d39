# Copyright: aiadmin-ops contributors
# SPDX-License-Identifier: MIT
"""Documentation of the connection options that pg_gate.common_argument_spec() gives the
database modules which are not gates (pg_backup, session_keys)."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  host:
    description: Database host name or address (verified against the certificate with verify-full).
    type: str
    required: true
  hostaddr: {description: "Numeric address to connect to, skipping name resolution.", type: str}
  port: {description: Database port., type: int, default: 5432}
  database: {description: The database., type: str, default: postgres, aliases: [dbname, login_db]}
  user: {description: Database user., type: str, default: postgres, aliases: [login_user]}
  password: {description: Its password (never logged)., type: str, aliases: [login_password]}
  sslmode: {description: libpq sslmode., type: str, default: verify-full,
            choices: [disable, allow, prefer, require, verify-ca, verify-full]}
  ssl_rootcert: {description: The provider's CA certificate., type: path, aliases: [ca_cert]}
  connect_timeout: {description: Seconds to wait for a connection., type: int, default: 10}
  report_only: {description: Unused (accepted for the shared gate options)., type: bool, default: false}
  driver: {description: PostgreSQL driver for the module's own session., type: str, default: auto,
           choices: [auto, psycopg, psycopg2]}
"""
