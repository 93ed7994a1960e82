// Starts a real parley server for the suite, provisions tenants and keys through its admin
// API, and validates bodies against OpenAI's official JSON Schemas.
import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..', '..');

/// The official schemas (JSON Schema 2020-12, `$defs`): in shared/ beside the repository (as
/// CI lays it out), or wherever PARLEY_OPENAI_SCHEMAS points.
const schemaFile = process.env.PARLEY_OPENAI_SCHEMAS ||
  path.resolve(repoRoot, '..', 'shared', 'spec', 'openai-schemas.json');
if (!fs.existsSync(schemaFile)) {
  throw new Error(`OpenAI schemas not found at ${schemaFile} (set PARLEY_OPENAI_SCHEMAS)`);
}
const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);
const spec = JSON.parse(fs.readFileSync(schemaFile, 'utf8'));
spec.$id = 'https://parley.local/openai-schemas.json';
ajv.addSchema(spec);

/// Asserts that `value` validates against OpenAI's schema `name`.
export function conforms(name, value) {
  const validate = ajv.getSchema(`${spec.$id}#/$defs/${name}`);
  if (!validate) throw new Error(`no schema ${name}`);
  if (!validate(value)) {
    throw new Error(`${name} violated: ${ajv.errorsText(validate.errors)}\n${JSON.stringify(value)}`);
  }
}

/// The scripted fake upstream (tests/fake_upstream) on a free loopback port.
export async function startFakeUpstream() {
  const binary = process.env.PARLEY_FAKE_UPSTREAM ||
    path.join(repoRoot, 'build', 'tests', 'fake_upstream', 'parley_fake_upstream');
  const child = spawn(binary, ['--listen', '127.0.0.1:0', '--max-seconds', '120'],
                      { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('fake upstream did not start')), 10000);
    child.stdout.on('data', (chunk) => {
      const m = /"listening":(\d+)/.exec(String(chunk));
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    });
  });
  return { url: `http://127.0.0.1:${port}/v1`, stop: () => child.kill('SIGTERM') };
}

/// A parley node on a free loopback port with its own data directory.
export async function startParley(extraEnv = {}) {
  const binary = process.env.PARLEY_BINARY || path.join(repoRoot, 'build', 'runtime', 'parley');
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'parley-e2e-'));
  const adminKey = randomBytes(24).toString('hex');
  const child = spawn(binary, ['serve'], {
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
  });
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('parley did not start in 20 s')), 20000);
    let pending = '';
    child.stdout.on('data', (chunk) => {
      pending += chunk;
      let nl;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        try {
          const j = JSON.parse(line);
          if (j.msg === 'listening') {
            clearTimeout(timer);
            resolve(j.port);
          }
        } catch { /* not JSON: ignore */ }
      }
    });
    child.on('exit', (code) => reject(new Error(`parley exited with ${code}`)));
  });
  const base = `http://127.0.0.1:${port}`;
  const admin = async (method, route, body) => {
    const res = await fetch(base + route, {
      method,
      headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, body: await res.json() };
  };
  return {
    base,
    baseURL: `${base}/v1`,
    dataDir,
    admin,
    /// A new tenant and an API key for it.
    async tenantKey(slug, config = {}) {
      const t = await admin('POST', '/admin/v1/tenants', { slug, name: slug, config });
      if (t.status !== 201) throw new Error(`tenant create: ${JSON.stringify(t.body)}`);
      const k = await admin('POST', `/admin/v1/tenants/${t.body.id}/keys`, { name: 'e2e' });
      if (k.status !== 201) throw new Error(`key create: ${JSON.stringify(k.body)}`);
      return { tenantId: t.body.id, key: k.body.key };
    },
    /// Rows of a query against the node's SQLite file.
    sql(query) {
      return execFileSync('sqlite3', [path.join(dataDir, 'parley.db'), query], { encoding: 'utf8' })
        .trim()
        .split('\n')
        .filter((l) => l.length > 0);
    },
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((resolve) => {
          const t = setTimeout(() => { child.kill('SIGKILL'); resolve(); }, 5000);
          child.on('exit', () => { clearTimeout(t); resolve(); });
        });
      }
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
