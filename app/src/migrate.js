'use strict';
// npm run migrate: the database migrations of this release, migrations/NNN_<name>.sql in order.
// Each pending one runs in its own transaction together with its row in schema_migrations, so a
// failed migration leaves nothing behind; applied ones are skipped (a second run does nothing).
// A session advisory lock keeps two runs from interleaving. Prints one line per migration and a
// summary; exit 0 when the schema is up to date, 1 when a migration failed (rolled back).
// Test fixture: AIADMIN_DEMO_MIGRATION_FAIL=1 fails each pending migration after its SQL ran,
// before its COMMIT.
require('dotenv').config();
const fs = require('node:fs');
const path = require('node:path');
const { Client } = require('pg');
const { dbSettings, LOCK_CLASS } = require('./main');

const DIR = path.resolve(__dirname, '..', 'migrations');
const MIGRATE_LOCK_KEY = 0x4d494752; // 'MIGR', beside the WhatsApp session locks of LOCK_CLASS

function pending(applied) {
  return fs
    .readdirSync(DIR)
    .filter((name) => /^\d{3}_[a-z0-9_]+\.sql$/.test(name))
    .sort()
    .filter((name) => !applied.has(name));
}

async function migrate(env) {
  const client = new Client(dbSettings(env, 'ai-admin-migrate'));
  await client.connect();
  try {
    await client.query('SELECT pg_advisory_lock($1, $2)', [LOCK_CLASS, MIGRATE_LOCK_KEY]);
    await client.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
      name text PRIMARY KEY, release text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`);
    const { rows } = await client.query('SELECT name FROM schema_migrations');
    const todo = pending(new Set(rows.map((r) => r.name)));
    const release = env.AIADMIN_RELEASE || path.basename(path.resolve(__dirname, '..'));
    for (const name of todo) {
      const sql = fs.readFileSync(path.join(DIR, name), 'utf8');
      await client.query('BEGIN');
      try {
        await client.query(sql);
        await client.query('INSERT INTO schema_migrations (name, release) VALUES ($1, $2)', [name, release]);
        if (env.AIADMIN_DEMO_MIGRATION_FAIL === '1') {
          throw new Error('AIADMIN_DEMO_MIGRATION_FAIL=1: this migration is built to fail (test fixture)');
        }
        await client.query('COMMIT');
      } catch (err) {
        await client.query('ROLLBACK').catch(() => {});
        err.message = `${name}: ${err.message} (rolled back)`;
        throw err;
      }
      console.log(`migrate: applied ${name}`);
    }
    console.log(`migrate: up to date, ${todo.length} applied, ${rows.length} already applied`);
  } finally {
    await client.end().catch(() => {});
  }
}

if (require.main === module) {
  migrate(process.env).catch((err) => {
    console.error(`migrate: FAILED: ${err.message}`);
    process.exit(1);
  });
}

module.exports = { migrate, pending };
