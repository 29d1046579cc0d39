'use strict';
// AI Admin stand-in: one codebase, one process per PM2 role.
//   node src/main.js --role <pm2 name>
// Every role holds a PostgreSQL pool of POSTGRES_MAX_CONNECTIONS (opened eagerly, min = max,
// application_name = role) and a Redis connection. Roles with extra behaviour:
//   ai-admin-api              HTTP API: /health, /health/database, /health/whatsapp, and
//                             POST /webhook (one row in `messages`, acknowledged after COMMIT)
//   baileys-whatsapp-service  holds the WhatsApp session lock (pg advisory lock) while it runs and,
//                             only while it holds it, upserts its auth keys in `whatsapp_keys`
//                             every AIADMIN_KEYS_INTERVAL_MS (5000) and touches whatsapp_auth
//   ai-admin-worker-v2        every AIADMIN_WORKER_INTERVAL_MS (2000) folds the new `messages`
//                             into `dialog_contexts` (plus the generic heartbeat)
// Any other name is a generic worker (periodic database and Redis heartbeat).
// Periodic writes never overlap themselves, log each distinct error once and retry next tick.
// Stopping (SIGTERM/SIGINT): the API refuses new connections, closes idle keep-alive ones,
// answers in-flight requests with `connection: close`, then waits for in-flight writes (at most
// AIADMIN_SHUTDOWN_TIMEOUT_MS, 10000) before it closes the pools.
// Test fixtures: AIADMIN_DEMO_CRASH_ON_START=1 makes every role throw at start;
// AIADMIN_DEMO_CRASH_AFTER_MS=<n> makes it exit n ms after it started (PM2 restarts it).
// Settings: `.env` in the working directory, loaded with dotenv first thing, as the real app
// does (the process environment wins over the file).
require('dotenv').config();
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const path = require('node:path');
const { Pool, Client } = require('pg');
const { createClient } = require('redis');
const { HttpError, readBody, parseWebhook, MAX_BODY_BYTES } = require('./webhook');
const { writeKeys, insertMessage, maxMessageId, processMessages } = require('./writes');

const LOCK_CLASS = 0x41494144; // 'AIAD': first key of the two-int advisory lock
const RELEASE = path.basename(path.resolve(__dirname, '..'));

function parseRole(argv, env) {
  const i = argv.indexOf('--role');
  if (i >= 0 && argv[i + 1]) return argv[i + 1];
  return env.AIADMIN_ROLE || env.name || 'ai-admin-worker';
}

function loadConfig(env) {
  return { ...env };
}

function int(value, fallback) {
  const n = Number.parseInt(value, 10);
  return Number.isFinite(n) ? n : fallback;
}

// 31-bit FNV-1a: the second key of the advisory lock, from the company id.
function lockKey(companyId) {
  let h = 0x811c9dc5;
  for (const byte of Buffer.from(`whatsapp:${companyId}`, 'utf8')) {
    h ^= byte;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h & 0x7fffffff;
}

function dbSettings(cfg, role) {
  const host = cfg.POSTGRES_HOST || '127.0.0.1';
  const sslmode = cfg.POSTGRES_SSLMODE || 'verify-full';
  let ssl = false;
  if (sslmode !== 'disable') {
    ssl = { rejectUnauthorized: sslmode === 'verify-full' || sslmode === 'verify-ca' };
    if (cfg.PGSSLROOTCERT) ssl.ca = fs.readFileSync(cfg.PGSSLROOTCERT);
    if (ssl.rejectUnauthorized && !ssl.ca) throw new Error(`sslmode=${sslmode} needs PGSSLROOTCERT`);
    if (net.isIP(host) === 0) ssl.servername = host;
    if (sslmode === 'verify-ca') ssl.checkServerIdentity = () => undefined;
  }
  return {
    host,
    port: int(cfg.POSTGRES_PORT, 5432),
    database: cfg.POSTGRES_DATABASE,
    user: cfg.POSTGRES_USER,
    password: cfg.POSTGRES_PASSWORD,
    application_name: role,
    ssl,
    connectionTimeoutMillis: int(cfg.POSTGRES_CONNECTION_TIMEOUT, 10000),
    query_timeout: int(cfg.POSTGRES_QUERY_TIMEOUT, 60000),
  };
}

class App {
  constructor(role, cfg) {
    this.role = role;
    this.cfg = cfg;
    this.timers = [];
    this.closing = false;
    this.inflight = new Set(); // periodic writes under way (awaited when stopping)
    this.errors = new Map(); // task name -> last error message (each distinct error logged once)
    this.log = (msg) => console.log(`${new Date().toISOString()} [${role}] ${msg}`);
    this.warn = (msg) => console.error(`${new Date().toISOString()} [${role}] ${msg}`);
    this.db = dbSettings(cfg, role);
    this.poolSize = int(cfg.POSTGRES_MAX_CONNECTIONS, 3);
    this.pool = new Pool({
      ...this.db,
      max: this.poolSize,
      min: this.poolSize,
      idleTimeoutMillis: int(cfg.POSTGRES_IDLE_TIMEOUT, 30000),
      maxLifetimeSeconds: int(cfg.POSTGRES_MAX_LIFETIME, 3600),
    });
    this.pool.on('error', (err) => this.warn(`database pool: ${err.message}`));
    this.redis = createClient({
      socket: {
        host: cfg.REDIS_HOST || '127.0.0.1',
        port: int(cfg.REDIS_PORT, 6379),
        connectTimeout: 5000,
        reconnectStrategy: (retries) => Math.min(200 * (retries + 1), 2000),
      },
      password: cfg.REDIS_PASSWORD || undefined,
    });
    this.redisError = null;
    this.redis.on('error', (err) => {
      if (this.redisError !== err.message) this.warn(`redis: ${err.message}`);
      this.redisError = err.message;
    });
    this.redis.on('ready', () => {
      if (this.redisError) this.log('redis: connected again');
      this.redisError = null;
    });
    this.companyId = cfg.COMPANY_ID || 'default';
    this.lockKey = lockKey(this.companyId);
  }

  every(ms, fn) {
    const t = setInterval(() => fn().catch((err) => this.warn(err.message)), ms);
    this.timers.push(t);
  }

  // Like the Redis error logging: a task's error is logged when it differs from the last one,
  // and the recovery once.
  failed(name, err) {
    if (this.errors.get(name) !== err.message) this.warn(`${name}: ${err.message}`);
    this.errors.set(name, err.message);
  }

  succeeded(name) {
    if (!this.errors.has(name)) return;
    this.errors.delete(name);
    this.log(`${name}: ok again`);
  }

  // A periodic write every `ms`: never two runs at once (a slow run skips ticks), never after
  // stop() began; errors are logged (see failed) and the next tick tries again. Returns the run
  // function, so that the caller can run it once right away.
  task(name, ms, fn) {
    let running = false;
    const run = async () => {
      if (running || this.closing) return;
      running = true;
      const p = fn()
        .then(() => this.succeeded(name), (err) => this.failed(name, err))
        .finally(() => {
          running = false;
          this.inflight.delete(p);
        });
      this.inflight.add(p);
      await p;
    };
    this.timers.push(setInterval(run, ms));
    return run;
  }

  // Keep the pool at its size: check out every slot at once, then give them back.
  async fillPool() {
    const missing = this.poolSize - this.pool.totalCount;
    if (missing <= 0 || this.pool.waitingCount > 0) return;
    const clients = await Promise.allSettled(Array.from({ length: missing }, () => this.pool.connect()));
    const failed = clients.filter((c) => c.status === 'rejected');
    for (const c of clients) if (c.status === 'fulfilled') c.value.release();
    if (failed.length) throw new Error(`database: ${failed.length} connection(s) failed: ${failed[0].reason.message}`);
  }

  async checkDatabase() {
    const started = process.hrtime.bigint();
    try {
      const { rows } = await this.pool.query(
        'SELECT current_setting(\'server_version\') AS version, ' +
          'coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false) AS ssl',
      );
      const latency = Number(process.hrtime.bigint() - started) / 1e6;
      return { ok: true, latency: Math.round(latency * 100) / 100, version: rows[0].version, ssl: rows[0].ssl };
    } catch (err) {
      return { ok: false, error: err.message };
    }
  }

  async checkRedis() {
    if (!this.redis.isReady) return { ok: false, error: this.redisError || 'not connected' };
    try {
      const pong = await this.redis.ping();
      return { ok: pong === 'PONG' };
    } catch (err) {
      return { ok: false, error: err.message };
    }
  }

  async whatsappSession() {
    const { rows } = await this.pool.query(
      'SELECT a.application_name, host(a.client_addr) AS client_addr, l.pid FROM pg_locks l ' +
        'LEFT JOIN pg_stat_activity a ON a.pid = l.pid ' +
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 2",
      [LOCK_CLASS, this.lockKey],
    );
    return rows[0] || null;
  }

  async start() {
    if (this.cfg.AIADMIN_DEMO_CRASH_ON_START === '1') {
      throw new Error('AIADMIN_DEMO_CRASH_ON_START=1: this release is built to crash at start (test fixture)');
    }
    this.log(`starting release ${RELEASE} (pid ${process.pid}, pool ${this.poolSize})`);
    this.redis.connect().catch((err) => this.warn(`redis: ${err.message}`));
    await this.fillPool().catch((err) => this.warn(err.message));
    this.every(5000, () => this.fillPool());
    if (this.role === 'baileys-whatsapp-service') await this.startWhatsapp();
    if (this.role === 'ai-admin-worker-v2') await this.startWorker();
    if (this.role === 'ai-admin-api') await this.startApi();
    else this.every(int(this.cfg.AIADMIN_HEARTBEAT_MS, 15000), () => this.heartbeat());
    this.log('ready');
    const crashAfter = int(this.cfg.AIADMIN_DEMO_CRASH_AFTER_MS, 0);
    if (crashAfter > 0) {
      setTimeout(() => {
        this.warn(`FATAL: AIADMIN_DEMO_CRASH_AFTER_MS=${crashAfter}: this release is built to crash (test fixture)`);
        process.exit(1);
      }, crashAfter);
    }
  }

  async heartbeat() {
    const [db, redis] = await Promise.all([this.checkDatabase(), this.checkRedis()]);
    if (!db.ok || !redis.ok) this.warn(`heartbeat: database ${db.ok ? 'ok' : db.error}, redis ${redis.ok ? 'ok' : redis.error}`);
  }

  // Single writer: at most one process (on any host) holds the company's session lock.
  async startWhatsapp() {
    const waitMs = int(this.cfg.AIADMIN_LOCK_WAIT_SECONDS, 15) * 1000;
    const deadline = Date.now() + waitMs;
    const client = new Client({ ...this.db, application_name: this.role });
    client.on('error', (err) => this.warn(`session lock connection: ${err.message}`));
    await client.connect();
    for (;;) {
      const { rows } = await client.query('SELECT pg_try_advisory_lock($1, $2) AS locked', [LOCK_CLASS, this.lockKey]);
      if (rows[0].locked) break;
      if (Date.now() >= deadline) {
        const holder = await this.whatsappSession().catch(() => null);
        const who = holder ? ` (pid ${holder.pid}, ${holder.application_name || '?'} from ${holder.client_addr || 'local'})` : '';
        await client.end().catch(() => {});
        const err = new Error(
          `another host holds the WhatsApp session lock for company ${this.companyId} ` +
            `(advisory lock ${LOCK_CLASS},${this.lockKey})${who}: refusing to start`,
        );
        err.exitCode = 3;
        throw err;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
    this.lockClient = client;
    client.on('end', () => {
      if (this.closing) return;
      this.warn('session lock connection lost: exiting so that PM2 restarts the session');
      process.exit(4);
    });
    this.log(`WhatsApp session lock acquired for company ${this.companyId} (advisory lock ${LOCK_CLASS},${this.lockKey})`);
    // The keys are written on the lock's own connection, in a transaction that first checks
    // that this session holds the lock: no lock, no keys. First write right away.
    this.keysTick = 0;
    const run = this.task('whatsapp keys', int(this.cfg.AIADMIN_KEYS_INTERVAL_MS, 5000), () =>
      writeKeys(this.lockClient, {
        companyId: this.companyId,
        lockClass: LOCK_CLASS,
        lockKey: this.lockKey,
        tick: this.keysTick++,
      }),
    );
    await run();
  }

  // ai-admin-worker-v2: the high-water mark starts at the company's newest message when the
  // worker starts (older messages are not its business); each tick processes what came after it,
  // one transaction per batch of AIADMIN_WORKER_BATCH (500), until nothing new is left.
  // The mark only moves after a batch committed. Known limit of the stand-in: a message whose
  // INSERT commits after a higher id was already processed is skipped (ids are not commit order).
  async startWorker() {
    const limit = Math.max(1, int(this.cfg.AIADMIN_WORKER_BATCH, 500));
    this.lastMessageId = null;
    const run = this.task('worker', int(this.cfg.AIADMIN_WORKER_INTERVAL_MS, 2000), async () => {
      if (this.lastMessageId === null) {
        this.lastMessageId = await maxMessageId(this.pool, this.companyId);
        this.log(`worker: processing messages after id ${this.lastMessageId} for company ${this.companyId}`);
        return;
      }
      for (;;) {
        const done = await processMessages(this.pool, { companyId: this.companyId, afterId: this.lastMessageId, limit });
        this.lastMessageId = done.lastId;
        if (done.messages) this.log(`worker: ${done.messages} message(s), ${done.phones} dialog(s), up to id ${done.lastId}`);
        if (done.messages < limit || this.closing) return;
      }
    });
    await run();
  }

  async startApi() {
    const port = int(this.cfg.AIADMIN_API_PORT || this.cfg.PORT, 3000);
    const host = this.cfg.AIADMIN_API_HOST || '0.0.0.0';
    this.server = http.createServer((req, res) => {
      this.route(req, res).catch((err) => this.send(res, 500, { status: 'error', error: err.message }));
    });
    await new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, resolve);
    });
    this.log(`API listening on ${host}:${port}`);
  }

  async route(req, res) {
    const url = new URL(req.url, 'http://localhost');
    if (url.pathname === '/webhook') {
      if (req.method === 'POST') return this.webhook(req, res);
      return this.send(res, 405, { status: 'error', error: 'method not allowed' }, { allow: 'POST' });
    }
    if (req.method !== 'GET') return this.send(res, 405, { status: 'error', error: 'method not allowed' });
    if (url.pathname === '/health') return this.health(res);
    if (url.pathname === '/health/database') return this.healthDatabase(res);
    if (url.pathname === '/health/whatsapp') return this.healthWhatsapp(res);
    return this.send(res, 404, { status: 'error', error: 'not found' });
  }

  // POST /webhook {"id", "phone", "body"} -> one row in messages. Stand-in: the row's `body` is
  // the webhook's message id, exactly as given (no schema change; a probe finds its write by id
  // with `WHERE body = <id>`); the text is validated but not stored. 201 only once the INSERT has
  // committed: an acknowledged write is durable. The acknowledgement is logged after the commit,
  // one line per write (`webhook: acknowledged message <row> (<id>)`): disaster recovery counts the
  // acknowledged writes a restored database lacks from these lines (the acked_writes module).
  // A database error is 503 and acknowledges nothing (the row may still exist if the commit
  // outran the error, e.g. a client-side query timeout); it is logged, one line per message
  // (`webhook: failed message (<id>): ...` on stderr), so that a watch can count the share of
  // messages failing (the runbook's rollback trigger: more than 50 %).
  async webhook(req, res) {
    let msg;
    try {
      msg = parseWebhook(await readBody(req, MAX_BODY_BYTES));
    } catch (err) {
      if (!(err instanceof HttpError)) return req.destroy(); // the client went away mid-body
      // 413: the rest of the body is not read, so the connection cannot be reused.
      return this.send(res, err.status, { stored: false, error: err.message }, err.status === 413 ? { connection: 'close' } : {});
    }
    let row;
    try {
      row = await insertMessage(this.pool, { companyId: this.companyId, phone: msg.phone, body: msg.id });
    } catch (err) {
      this.failed('webhook', err);
      this.warn(`webhook: failed message (${msg.id}): database: ${err.message}`);
      return this.send(res, 503, { stored: false, id: msg.id, error: `database: ${err.message}` });
    }
    this.succeeded('webhook');
    this.log(`webhook: acknowledged message ${row} (${msg.id})`);
    const n = Number(row);
    return this.send(res, 201, { stored: true, id: msg.id, message_row: Number.isSafeInteger(n) ? n : row });
  }

  async health(res) {
    const [db, redis] = await Promise.all([this.checkDatabase(), this.checkRedis()]);
    let session = null;
    if (db.ok) session = await this.whatsappSession().catch(() => null);
    const database = db.ok ? 'connected' : 'disconnected';
    const ok = db.ok && redis.ok;
    let status = 'unhealthy';
    if (ok) status = session ? 'healthy' : 'degraded';
    this.send(res, ok ? 200 : 503, {
      status,
      timestamp: new Date().toISOString(),
      uptime: Math.round(process.uptime() * 1000) / 1000,
      database,
      services: {
        whatsapp: session ? 'connected' : 'disconnected',
        database,
        redis: redis.ok ? 'connected' : 'disconnected',
      },
      release: RELEASE,
    });
  }

  async healthDatabase(res) {
    const db = await this.checkDatabase();
    this.send(res, db.ok ? 200 : 503, {
      status: db.ok ? 'healthy' : 'unhealthy',
      backend: 'postgresql',
      latency: db.ok ? db.latency : null,
      pool: { total: this.pool.totalCount, idle: this.pool.idleCount, waiting: this.pool.waitingCount },
      ...(db.ok ? { server_version: db.version, ssl: db.ssl } : { error: db.error }),
    });
  }

  async healthWhatsapp(res) {
    const thresholds = {
      warning: int(this.cfg.WHATSAPP_EXPIRED_KEYS_WARNING, 100),
      critical: int(this.cfg.WHATSAPP_EXPIRED_KEYS_CRITICAL, 250),
    };
    const lastCheck = new Date().toISOString();
    try {
      const { rows } = await this.pool.query(
        'SELECT (SELECT count(*) FROM whatsapp_auth) AS auth_records, count(*) AS total_keys, ' +
          "count(*) FILTER (WHERE expires_at < now() OR updated_at < now() - interval '30 days') AS expired_keys " +
          'FROM whatsapp_keys',
      );
      const counts = Object.fromEntries(Object.entries(rows[0]).map(([k, v]) => [k, Number(v)]));
      let status = 'healthy';
      if (counts.expired_keys > thresholds.critical) status = 'critical';
      else if (counts.expired_keys > thresholds.warning) status = 'warning';
      this.send(res, 200, { status, ...counts, thresholds, last_check: lastCheck });
    } catch (err) {
      this.send(res, 503, { status: 'error', error: err.message, thresholds, last_check: lastCheck });
    }
  }

  send(res, code, body, headers = {}) {
    if (res.headersSent) return res.destroy();
    const text = JSON.stringify(body);
    const all = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers };
    // A stopping process must not keep serving keep-alive sockets: each answer ends its connection.
    if (this.closing) all.connection = 'close';
    res.writeHead(code, all);
    res.end(text);
  }

  async stop(signal) {
    if (this.closing) return;
    this.closing = true;
    this.log(`${signal}: stopping`);
    for (const t of this.timers) clearInterval(t);
    const graceMs = int(this.cfg.AIADMIN_SHUTDOWN_TIMEOUT_MS, 10000);
    if (this.server) {
      // close(): no new connections; the callback runs once every connection is gone. Idle
      // keep-alive sockets are closed now, busy ones after their answer (connection: close).
      const closed = new Promise((r) => this.server.close(r));
      this.server.closeIdleConnections();
      const grace = setTimeout(() => {
        this.warn(`requests still open after ${graceMs} ms: closing their connections`);
        this.server.closeAllConnections();
      }, graceMs);
      await closed;
      clearTimeout(grace);
    }
    if (this.inflight.size) {
      let timer;
      const late = new Promise((r) => {
        timer = setTimeout(r, graceMs);
      });
      await Promise.race([Promise.allSettled([...this.inflight]), late]);
      clearTimeout(timer);
    }
    if (this.lockClient) await this.lockClient.end().catch(() => {});
    await this.pool.end().catch(() => {});
    if (this.redis.isReady) await this.redis.quit().catch(() => {});
    else if (this.redis.isOpen) await this.redis.disconnect().catch(() => {});
  }
}

async function main() {
  const role = parseRole(process.argv, process.env);
  let app;
  try {
    app = new App(role, loadConfig(process.env));
    for (const signal of ['SIGINT', 'SIGTERM']) {
      process.once(signal, () => app.stop(signal).finally(() => process.exit(0)));
    }
    await app.start();
  } catch (err) {
    console.error(`${new Date().toISOString()} [${role}] FATAL: ${err.message}`);
    // Set first: if stopping leaves the event loop empty, node exits with this code anyway.
    process.exitCode = err.exitCode || 1;
    if (app) await app.stop('fatal').catch(() => {});
    process.exit(err.exitCode || 1);
  }
}

if (require.main === module) main();

module.exports = { App, parseRole, loadConfig, lockKey, dbSettings, LOCK_CLASS };
