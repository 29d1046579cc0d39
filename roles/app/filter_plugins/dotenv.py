# Copyright: aiadmin-ops contributors
# SPDX-License-Identifier: MIT
"""Jinja filters for `.env` as dotenv 16 reads it (the app's `require('dotenv').config()`).

dotenv 16's parse(): a value in single quotes or backticks is taken literally (newlines
included); a value in double quotes is taken literally except that the two-character sequences
`\\n` and `\\r` become a line feed and a carriage return (`\\"` is NOT unescaped); carriage
returns anywhere else are turned into line feeds before parsing. So a value is carried byte for
byte by the first of:
  'value'   when it holds no ' and no carriage return;
  `value`   when it holds no ` and no carriage return;
  "value"   (line feeds and carriage returns written as \\n and \\r) when it holds no " and no
            literal \\n or \\r sequence.
Anything else (it holds ', ` and ", or a carriage return together with ", or a literal \\n
sequence) cannot be carried: `dotenv_quote` raises, `dotenv_uncarried` names such keys.
"""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _quoted(value):
    text = str(value)
    if "\r" not in text:
        for quote in ("'", "`"):
            if quote not in text:
                return quote + text + quote
    if '"' not in text and "\\n" not in text and "\\r" not in text:
        return '"' + text.replace("\n", "\\n").replace("\r", "\\r") + '"'
    return None


def dotenv_quote(value, key="a key"):
    """The value written so that dotenv returns it unchanged; raises naming the key, never the value."""
    quoted = _quoted(value)
    if quoted is None:
        raise AnsibleFilterError(f"the .env value of {key} cannot be written so that dotenv reads it back unchanged "
                                 "(it holds ', ` and \", or a carriage return or a literal \\n with \")")
    return quoted


def dotenv_uncarried(env):
    """Keys of a mapping whose name is not a variable name or whose value dotenv cannot carry."""
    return sorted(str(k) for k, v in env.items() if not KEY.match(str(k)) or _quoted(v) is None)


class FilterModule:
    def filters(self):
        return {"dotenv_quote": dotenv_quote, "dotenv_uncarried": dotenv_uncarried}
