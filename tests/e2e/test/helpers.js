// Shared machinery of the end-to-end suite: starts a real parley server (and, for the upstream
// tests, the scripted fake upstream) on loopback ports, provisions tenants and keys through the
// admin API, and validates bodies against OpenAI's official JSON Schemas.
//
// Only node: built-ins, the openai SDK, ajv and ajv-formats; runs on Node >= 18.19 (Debian's 18
// in CI) as well as 20+.
import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';

const here = path.dirname(fileURLToPath(import.meta.url));
/// tests/e2e/test -> the repository root.
export const repoRoot = path.resolve(here, '..', '..', '..');

/// Per-test time limit (ms): every test passes `{ timeout: TEST_TIMEOUT }`.
export const TEST_TIMEOUT = 20000;
/// Time limit for before/after hooks (starting and stopping processes).
export const HOOK_TIMEOUT = 30000;

// ---------------------------------------------------------------------------------------------
// OpenAI's schemas
//
// net/spec/openai-schemas.json (in the repository, with its source noted in net/spec/README.md;
// PARLEY_OPENAI_SCHEMAS overrides) is one JSON Schema 2020-12 document: {"$schema", "title", "$comment", "$defs"} with
// 79 component schemas under "$defs" (the targets CreateChatCompletionResponse,
// CreateChatCompletionStreamResponse, ListModelsResponse, Model, ErrorResponse, Error, ... and
// everything they reference). Its extractor already normalised the OpenAPI 3.1 dialect away:
// `nullable: true` became a `{"type": "null"}` alternative, `example`/`discriminator`/`x-*` were
// dropped, and every `#/components/schemas/X` reference was rewritten to `#/$defs/X` (checked:
// no `nullable`, `discriminator`, `x-*` or `#/components` remain in the file). So the document is
// loaded as-is into Ajv's 2020-12 dialect under a synthetic $id, and a target is compiled by
// reference (`<$id>#/$defs/<Name>`), which resolves the internal `#/$defs/...` references.
//
// What remained to handle:
//  * strict: false — the schemas carry annotation keywords Ajv does not know (e.g. `deprecated`
//    is fine, but descriptions with odd keys and formats below would make strict mode throw).
//  * OpenAPI formats that are not JSON Schema formats: `unixtime` (4 uses: `created`,
//    `expires_at`) and `float` (1 use). They are registered below — `unixtime` as a non-negative
//    integer number of seconds, `float` as any finite number — so they are checked rather than
//    "unknown format ... ignored" warnings. `uri` and `date` come from ajv-formats.
// ---------------------------------------------------------------------------------------------
const schemaFile = process.env.PARLEY_OPENAI_SCHEMAS ||
  path.resolve(repoRoot, 'net', 'spec', 'openai-schemas.json');
if (!fs.existsSync(schemaFile)) {
  throw new Error(`OpenAI schemas not found at ${schemaFile} (set PARLEY_OPENAI_SCHEMAS)`);
}
const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);
ajv.addFormat('unixtime', { type: 'number', validate: (n) => Number.isInteger(n) && n >= 0 });
ajv.addFormat('float', { type: 'number', validate: (n) => Number.isFinite(n) });
const spec = JSON.parse(fs.readFileSync(schemaFile, 'utf8'));
if (!spec.$defs) throw new Error(`${schemaFile}: expected the schemas under "$defs"`);
spec.$id = 'https://parley.local/openai-schemas.json';
ajv.addSchema(spec);

/// Whether the schema file has `name` (e.g. ErrorResponse).
export function hasSchema(name) {
  return Object.prototype.hasOwnProperty.call(spec.$defs, name);
}

/// Throws (an assertion failure) unless `value` validates against OpenAI's schema `name`.
export function conforms(name, value) {
  const validate = ajv.getSchema(`${spec.$id}#/$defs/${name}`);
  if (!validate) throw new Error(`no schema ${name} in ${schemaFile}`);
  if (!validate(value)) {
    throw new Error(`${name} violated: ${ajv.errorsText(validate.errors)}\n${JSON.stringify(value)}`);
  }
}

/// An SDK APIError's body is `{"error": err.error}`: validates it as ErrorResponse (or, if the
/// schema file lacked ErrorResponse, the inner object as Error).
export function errorConforms(err) {
  if (hasSchema('ErrorResponse')) conforms('ErrorResponse', { error: err.error });
  else conforms('Error', err.error);
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Every child this process started; killed hard if the test process exits without stopping them.
const children = new Set();
process.on('exit', () => {
  for (const child of children) {
    try { child.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

function track(child) {
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

/// SIGTERM, then SIGKILL after `graceMs`; resolves when the child has exited.
export function terminate(child, graceMs = 5000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => { clearTimeout(timer); resolve(); });
    child.kill('SIGTERM');
  });
}

/// Calls `onLine` for each complete stdout line of `child` (JSON lines from parley's logger).
function readLines(child, onLine) {
  let pending = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk) => {
    pending += chunk;
    let nl;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      onLine(line);
    }
  });
}

/// The scripted fake upstream (tests/fake_upstream) on a free loopback port.
export async function startFakeUpstream() {
  const binary = process.env.PARLEY_FAKE_UPSTREAM ||
    path.join(repoRoot, 'build', 'tests', 'fake_upstream', 'parley_fake_upstream');
  const child = track(spawn(binary, ['--listen', '127.0.0.1:0', '--max-seconds', '120'],
                            { stdio: ['ignore', 'pipe', 'inherit'] }));
  try {
    const port = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('fake upstream did not start in 10 s')), 10000);
      child.once('error', (e) => { clearTimeout(timer); reject(e); });
      child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`fake upstream exited with ${code}`)); });
      readLines(child, (line) => {
        const m = /"listening":(\d+)/.exec(line);
        if (m) { clearTimeout(timer); resolve(Number(m[1])); }
      });
    });
    return { url: `http://127.0.0.1:${port}/v1`, stop: () => terminate(child) };
  } catch (e) {
    await terminate(child);
    throw e;
  }
}

/// A parley server (`parley serve`) on a free loopback port with its own temporary data
/// directory and a random 40-character admin key. `extraEnv` adds/overrides environment.
export async function startParley(extraEnv = {}) {
  const binary = process.env.PARLEY_BINARY || path.join(repoRoot, 'build', 'runtime', 'parley');
  if (!fs.existsSync(binary)) {
    throw new Error(`parley binary not found at ${binary} (build it, or set PARLEY_BINARY)`);
  }
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'parley-e2e-'));
  const adminKey = randomBytes(20).toString('hex'); // 40 characters
  const child = track(spawn(binary, ['serve'], {
    env: {
      ...process.env,
      PARLEY_DATA_DIR: dataDir,
      PARLEY_HTTP_LISTEN: '127.0.0.1:0',
      PARLEY_ADMIN_KEY: adminKey,
      PARLEY_CHAT_ECHO_TOKENS_PER_SECOND: '0',
      PARLEY_LOG_LEVEL: 'info',
      ...extraEnv,
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  }));
  const cleanup = async () => {
    await terminate(child);
    fs.rmSync(dataDir, { recursive: true, force: true });
  };

  let port;
  try {
    port = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('parley did not log "listening" in 20 s')), 20000);
      child.once('error', (e) => { clearTimeout(timer); reject(e); });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`parley exited (${code ?? signal}) before listening`));
      });
      readLines(child, (line) => {
        let j;
        try { j = JSON.parse(line); } catch { return; } // not a JSON log line
        if (j.msg === 'listening' && Number.isInteger(j.port) && j.port > 0) {
          clearTimeout(timer);
          resolve(j.port);
        }
      });
    });
  } catch (e) {
    await cleanup();
    throw e;
  }

  const base = `http://127.0.0.1:${port}`;
  /// An admin API call; resolves to { status, body } (body parsed as JSON when there is one).
  const admin = async (method, route, body) => {
    const res = await fetch(base + route, {
      method,
      headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10000),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined };
  };

  return {
    base,
    /// What the SDK gets as baseURL.
    baseURL: `${base}/v1`,
    dataDir,
    dbFile: path.join(dataDir, 'parley.db'),
    admin,

    /// A new tenant (POST /admin/v1/tenants) and an API key for it (POST .../keys).
    async tenantKey(slug, config) {
      const body = { slug, name: `e2e ${slug}` };
      if (config !== undefined) body.config = config;
      const t = await admin('POST', '/admin/v1/tenants', body);
      if (t.status !== 201 || typeof t.body?.id !== 'string') {
        throw new Error(`tenant create: ${t.status} ${JSON.stringify(t.body)}`);
      }
      const k = await admin('POST', `/admin/v1/tenants/${t.body.id}/keys`, { name: 'e2e' });
      if (k.status !== 201 || typeof k.body?.key !== 'string') {
        throw new Error(`key create: ${k.status} ${JSON.stringify(k.body)}`);
      }
      return { tenantId: t.body.id, key: k.body.key };
    },

    /// A /v1 call with fetch and a tenant key; resolves to { status, headers, body }.
    async v1(key, method, route, body) {
      const res = await fetch(`${base}/v1${route}`, {
        method,
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(10000),
      });
      const text = await res.text();
      return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : undefined };
    },

    /// Rows (one string per row, '|'-separated columns) of a query against the server's SQLite
    /// file, through the sqlite3 CLI.
    sql(query) {
      return execFileSync('sqlite3', [path.join(dataDir, 'parley.db'), query],
                          { encoding: 'utf8', timeout: 10000 })
        .split('\n')
        .filter((l) => l.length > 0);
    },

    /// SIGTERM (SIGKILL after 5 s) and remove the data directory.
    stop: cleanup,
  };
}
