"""A PostgreSQL SCRAM-SHA-256 password verifier computed on the client (RFC 5802, RFC 7677).

``ALTER ROLE ... PASSWORD '<verifier>'`` stores the verifier as it is: the plaintext never reaches
the server, so ``log_statement = ddl`` (or a statement in an error report) logs only the verifier.
The password is normalised with SASLprep (RFC 4013) as PostgreSQL does (src/common/saslprep.c):
when it is not valid UTF-8 or SASLprep prohibits something in it, PostgreSQL uses the raw bytes,
and so does this.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stringprep
import unicodedata

ITERATIONS = 4096  # PostgreSQL's default scram_iterations
SALT_BYTES = 16


def _prohibited(ch):
    return (stringprep.in_table_c12(ch) or stringprep.in_table_c21_c22(ch) or stringprep.in_table_c3(ch)
            or stringprep.in_table_c4(ch) or stringprep.in_table_c5(ch) or stringprep.in_table_c6(ch)
            or stringprep.in_table_c7(ch) or stringprep.in_table_c8(ch) or stringprep.in_table_c9(ch))


def saslprep(password):
    """The bytes PostgreSQL hashes for this password (str)."""
    raw = password.encode("utf-8")
    if password.isascii():
        return raw  # PostgreSQL skips the normalisation for pure ASCII
    mapped = "".join(" " if stringprep.in_table_c12(ch) else ch for ch in password if not stringprep.in_table_b1(ch))
    normal = unicodedata.normalize("NFKC", mapped)
    if not normal or any(_prohibited(ch) for ch in normal):
        return raw
    rand_al = [stringprep.in_table_d1(ch) for ch in normal]
    # The bidirectional rule: with a RandAL character, no L character, and RandAL first and last.
    if any(rand_al) and (any(stringprep.in_table_d2(ch) for ch in normal) or not (rand_al[0] and rand_al[-1])):
        return raw
    return normal.encode("utf-8")


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def verifier(password, salt=None, iterations=ITERATIONS):
    """SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, the form pg_authid.rolpassword holds."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return "SCRAM-SHA-256$%d:%s$%s:%s" % (iterations, _b64(salt), _b64(stored_key), _b64(server_key))
