'use strict';
// POST /webhook: request body reading and validation (no database here; see main.js).
//   body      JSON object {"id": "<client id>", "phone": "<text>", "body": "<text>"}, at most
//             MAX_BODY_BYTES bytes (413 beyond, before or while reading)
//   id        non-empty string, at most MAX_ID_CHARS characters
//   phone     non-empty string, at most MAX_PHONE_CHARS characters
//   body      string (may be empty), at most MAX_TEXT_CHARS characters
// No string may contain U+0000 (PostgreSQL text cannot store it: that is the client's error, 400,
// not a database outage, 503).

const MAX_BODY_BYTES = 64 * 1024;
const MAX_ID_CHARS = 128;
const MAX_PHONE_CHARS = 32;
const MAX_TEXT_CHARS = 32 * 1024;

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Resolves with the whole body as a Buffer; rejects with HttpError(413) as soon as it is known to
// be too large (declared Content-Length or bytes received), or with the socket's error.
function readBody(req, limit = MAX_BODY_BYTES) {
  return new Promise((resolve, reject) => {
    const declared = req.headers['content-length'];
    if (declared !== undefined && Number(declared) > limit) {
      reject(new HttpError(413, `request body larger than ${limit} bytes`));
      return;
    }
    const chunks = [];
    let size = 0;
    let settled = false;
    const settle = (fn, value) => {
      if (settled) return;
      settled = true;
      fn(value);
    };
    req.on('data', (chunk) => {
      if (settled) return;
      size += chunk.length;
      if (size > limit) settle(reject, new HttpError(413, `request body larger than ${limit} bytes`));
      else chunks.push(chunk);
    });
    req.on('end', () => settle(resolve, Buffer.concat(chunks)));
    req.on('error', (err) => settle(reject, err));
    req.on('close', () => settle(reject, new Error('client closed the connection before the body ended')));
  });
}

function checkString(obj, name, { max, allowEmpty }) {
  const value = obj[name];
  if (value === undefined || value === null) throw new HttpError(400, `missing field "${name}"`);
  if (typeof value !== 'string') throw new HttpError(400, `field "${name}" must be a string`);
  if (!allowEmpty && value.length === 0) throw new HttpError(400, `field "${name}" must not be empty`);
  if (value.length > max) throw new HttpError(400, `field "${name}" longer than ${max} characters`);
  if (value.includes('\u0000')) throw new HttpError(400, `field "${name}" contains U+0000`);
  return value;
}

// Buffer -> {id, phone, body}, or throws HttpError(400).
function parseWebhook(raw) {
  let doc;
  try {
    doc = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw new HttpError(400, `invalid JSON: ${err.message}`);
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
    throw new HttpError(400, 'the body must be a JSON object');
  }
  return {
    id: checkString(doc, 'id', { max: MAX_ID_CHARS, allowEmpty: false }),
    phone: checkString(doc, 'phone', { max: MAX_PHONE_CHARS, allowEmpty: false }),
    body: checkString(doc, 'body', { max: MAX_TEXT_CHARS, allowEmpty: true }),
  };
}

module.exports = { HttpError, readBody, parseWebhook, MAX_BODY_BYTES, MAX_ID_CHARS, MAX_PHONE_CHARS, MAX_TEXT_CHARS };
