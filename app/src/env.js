'use strict';
// Exact .env parser. The format is the one the Ansible role renders:
//   KEY="<JSON string>"   (the role writes every value with `to_json`: only `"`, `\` and
//                          control characters are escaped, JSON.parse restores them exactly)
//   KEY=raw value         (unquoted: taken verbatim to the end of the line, nothing stripped
//                          but the line ending)
// Blank lines and lines starting with `#` are comments. No shell expansion of any kind, so
// `$`, `'`, `#`, `|`, `<`, `?`, `%`, `}` and spaces survive as written. The file is NOT meant
// to be sourced by a shell.
const fs = require('node:fs');

const KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

function parseEnv(text) {
  const out = {};
  const lines = text.split('\n');
  lines.forEach((rawLine, index) => {
    const line = rawLine.endsWith('\r') ? rawLine.slice(0, -1) : rawLine;
    if (line.trim() === '' || line.trimStart().startsWith('#')) return;
    const eq = line.indexOf('=');
    const key = eq > 0 ? line.slice(0, eq).trim() : '';
    if (!KEY.test(key)) {
      throw new Error(`.env line ${index + 1}: expected KEY=value`);
    }
    const value = line.slice(eq + 1);
    if (value.startsWith('"')) {
      try {
        const parsed = JSON.parse(value);
        if (typeof parsed !== 'string') throw new Error('not a string');
        out[key] = parsed;
      } catch (err) {
        throw new Error(`.env line ${index + 1} (${key}): invalid quoted value`);
      }
    } else {
      out[key] = value;
    }
  });
  return out;
}

function loadEnvFile(path) {
  return parseEnv(fs.readFileSync(path, 'utf8'));
}

module.exports = { parseEnv, loadEnvFile };
