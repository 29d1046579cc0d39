'use strict';
// The stand-in's database writes, shaped like the real app's (tables of lab/files/seed.sql).
// Every statement is parameterized. The company id is always passed as an untyped parameter
// and compared with or assigned to the company_id column directly, so PostgreSQL gives it the
// column's type: the same code works for an integer column (the lab, COMPANY_ID=1001) and for a
// text column (tests/app). A COMPANY_ID that does not fit the column fails the statement; the
// caller logs it and tries again on the next tick.

const crypto = require('node:crypto');
const { DatabaseError } = require('pg');

const KEY_TYPE = 'app-state-sync-key';
// A small fixed set of key ids: every tick rewrites all of them with new key material, so the
// company's row count never grows (upsert, not insert).
const KEY_IDS = ['AAAAAAAA', 'AAAAAAAB', 'AAAAAAAC', 'AAAAAAAD'];

const UPSERT_KEY =
  'INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at, expires_at) ' +
  "VALUES ($1, $2, $3, $4::jsonb, now(), now() + interval '7 days') " +
  'ON CONFLICT (company_id, key_type, key_id) DO UPDATE ' +
  'SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at';

const LOCK_HELD =
  "SELECT count(*)::int AS held FROM pg_locks WHERE locktype = 'advisory' AND granted " +
  'AND pid = pg_backend_pid() AND classid = $1 AND objid = $2 AND objsubid = 2';

function keyValue(index, tick) {
  return {
    keyData: crypto.randomBytes(32).toString('base64'),
    fingerprint: { rawId: index, currentIndex: tick, deviceIndexes: [0] },
    timestamp: String(Date.now()),
  };
}

// Runs fn(client) on a pooled client. pg-pool's own pool.query() discards the connection on any
// error, SQL errors included: a wrong COMPANY_ID or a missing table would then keep shrinking the
// pool that fillPool() keeps at its size. Here a server-side error (pg's DatabaseError) gives the
// connection back; anything else (reset, timeout...) discards the connection.
async function withClient(pool, fn) {
  const client = await pool.connect();
  let broken;
  try {
    return await fn(client);
  } catch (err) {
    if (!(err instanceof DatabaseError) || err.brokenConnection) broken = err;
    throw err;
  } finally {
    client.release(broken);
  }
}

async function rollback(client) {
  try {
    await client.query('ROLLBACK');
    return true;
  } catch {
    return false;
  }
}

// One transaction on the session-lock connection itself: it first checks that this very
// session holds the company's advisory lock (so keys are never written without it, even if the
// caller got it wrong), upserts the key set and touches whatsapp_auth.updated_at.
async function writeKeys(client, { companyId, lockClass, lockKey, tick }) {
  await client.query('BEGIN');
  try {
    const { rows } = await client.query(LOCK_HELD, [lockClass, lockKey]);
    if (!rows[0].held) throw new Error('this session does not hold the WhatsApp session lock: keys not written');
    for (const [index, keyId] of KEY_IDS.entries()) {
      await client.query(UPSERT_KEY, [companyId, KEY_TYPE, keyId, JSON.stringify(keyValue(index, tick))]);
    }
    const auth = await client.query('UPDATE whatsapp_auth SET updated_at = now() WHERE company_id = $1', [companyId]);
    await client.query('COMMIT');
    return { keys: KEY_IDS.length, authRows: auth.rowCount };
  } catch (err) {
    await rollback(client);
    throw err;
  }
}

// POST /webhook: one autocommit INSERT. When the promise resolves PostgreSQL has committed the
// row (synchronous_commit as configured on the server), so the caller may acknowledge it.
async function insertMessage(pool, { companyId, phone, body }) {
  return withClient(pool, async (client) => {
    const { rows } = await client.query(
      'INSERT INTO messages (company_id, phone, body) VALUES ($1, $2, $3) RETURNING id',
      [companyId, phone, body],
    );
    return rows[0].id; // bigint: a string from pg
  });
}

async function maxMessageId(pool, companyId) {
  return withClient(pool, async (client) => {
    const { rows } = await client.query('SELECT coalesce(max(id), 0) AS id FROM messages WHERE company_id = $1', [
      companyId,
    ]);
    return String(rows[0].id);
  });
}

const UPSERT_CONTEXT =
  'INSERT INTO dialog_contexts AS d (company_id, phone, context, updated_at) ' +
  "VALUES ($1, $2, jsonb_build_object('last_message', $3::text, 'messages', $4::int), now()) " +
  'ON CONFLICT (company_id, phone) DO UPDATE SET ' +
  "context = d.context || jsonb_build_object('last_message', $3::text, 'messages', " +
  "CASE WHEN jsonb_typeof(d.context -> 'messages') = 'number' THEN (d.context ->> 'messages')::numeric ELSE 0 END " +
  '+ $4::int), updated_at = now()';

// ai-admin-worker-v2: the messages of the company after `afterId` (at most `limit`, in id order),
// folded per phone into dialog_contexts, in one transaction. Returns the new high-water mark
// (unchanged when there was nothing new; the caller keeps the old one when this throws).
async function processMessages(pool, { companyId, afterId, limit }) {
  return withClient(pool, async (client) => {
    await client.query('BEGIN');
    try {
      const { rows } = await client.query(
        'SELECT id, phone, body FROM messages WHERE company_id = $1 AND id > $2 ORDER BY id LIMIT $3',
        [companyId, afterId, limit],
      );
      const phones = new Map();
      for (const row of rows) {
        const entry = phones.get(row.phone) || { count: 0, last: '' };
        entry.count += 1;
        entry.last = row.body;
        phones.set(row.phone, entry);
      }
      for (const [phone, { count, last }] of phones) {
        await client.query(UPSERT_CONTEXT, [companyId, phone, last, count]);
      }
      await client.query('COMMIT');
      const lastId = rows.length ? String(rows[rows.length - 1].id) : afterId;
      return { lastId, messages: rows.length, phones: phones.size };
    } catch (err) {
      if (!(await rollback(client))) err.brokenConnection = true; // never pool a client mid-transaction
      throw err;
    }
  });
}

module.exports = { KEY_TYPE, KEY_IDS, writeKeys, insertMessage, maxMessageId, processMessages };
