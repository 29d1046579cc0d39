"""What may look like a secret, and the environment a run gets and records.

- ``looks_secret(name)``: a variable name that says password, token, secret, dsn, credential,
  private, auth or identity, or ends in key(s) (a name ending in ``_file``, ``_path`` or ``_dir`` names a place,
  not a secret).
- ``url_credentials(value)``: the URLs in a value that carry a user's password
  (``scheme://user:password@host``).
- ``run_environment(extra)``: the environment an Ansible run needs, from an allowlist of the
  operator's (PATH, HOME, locale, SSH agent, proxies and CA bundles, ANSIBLE_*, AIADMIN_*), never
  the rest of it (cloud keys, tokens, whatever the shell holds).
- ``masked(env)``: that environment as it may be recorded (ansible-runner's ``command``
  artifact): secret-looking names' values and the passwords in URLs replaced, the way AWX masks
  a job's recorded environment.
"""

from __future__ import annotations

import os
import re

MASK = "**********"
_SECRET_WORDS = re.compile(r"(pass(word|wd|phrase)?|token|secret|(^|_)(api_?)?keys?$|apikey|dsn|credential|private_?key"
                           r"|(^|_)auth($|_)|identity|cookie|session_?id)", re.IGNORECASE)
_PLACE = re.compile(r"_(file|path|dir)$", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^/@:\s]*):(?P<password>[^/@\s]+)@",
                              re.IGNORECASE)
RUN_ENV_NAMES = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR",
                 "SSH_AUTH_SOCK", "SSH_AGENT_PID", "XDG_RUNTIME_DIR", "VIRTUAL_ENV", "CONTAINERS_CONF",
                 "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                 "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
RUN_ENV_PREFIXES = ("LC_", "ANSIBLE_", "AIADMIN_")


def looks_secret(name: str) -> bool:
    return bool(_SECRET_WORDS.search(name)) and not _PLACE.search(name)


def url_credentials(value: str) -> list[str]:
    """The scheme://user@ part of each URL in value that carries a password (never the password)."""
    return [f"{m['scheme']}{m['user']}@" for m in _URL_CREDENTIALS.finditer(str(value))]


def run_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in RUN_ENV_NAMES or k.startswith(RUN_ENV_PREFIXES)}
    env.update(extra or {})
    return env


def mask_url_passwords(text: str) -> str:
    """text with the password of every scheme://user:password@ URL in it masked."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", str(text))


def masked(env: dict[str, str]) -> dict[str, str]:
    return {key: MASK if looks_secret(key) else mask_url_passwords(value) for key, value in env.items()}
