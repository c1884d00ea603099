// Local OAuth 2.0 authorization server for dscc-token-operator tests.
//
// Runs panva's oidc-provider (a certified, production OAuth 2.0 / OpenID
// Connect server from npm) over HTTPS on 127.0.0.1 with only the
// client_credentials grant in use. See README.md for the environment
// variables. On success, prints exactly one JSON line to stdout:
//   {"issuer":"https://127.0.0.1:PORT","token_endpoint":"https://127.0.0.1:PORT/as/token.oauth2","port":PORT}
// Everything else (request log, warnings) goes to stderr. Secrets and tokens
// are never logged.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as https from 'node:https';

import Provider from 'oidc-provider';

const HOST = '127.0.0.1';

// A closed stdout/stderr pipe must not crash the server.
process.stdout.on('error', () => {});
process.stderr.on('error', () => {});

function fail(message) {
  process.stderr.write(`oauth-server: ${message}\n`);
  process.exit(2);
}

function log(fields) {
  process.stderr.write(`${JSON.stringify({ ts: new Date().toISOString(), ...fields })}\n`);
}

function intFromEnv(name, fallback, { min = 0, max = Number.MAX_SAFE_INTEGER } = {}) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw.trim())) fail(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  const value = Number.parseInt(raw.trim(), 10);
  if (value < min || value > max) fail(`${name} must be between ${min} and ${max}, got ${value}`);
  return value;
}

// ---------------------------------------------------------------- settings --

const port = intFromEnv('PORT', 0, { max: 65535 });
const tokenTtl = intFromEnv('TOKEN_TTL_SECONDS', 3600, { min: 1 });
const tokenFormat = (process.env.TOKEN_FORMAT || 'opaque').toLowerCase();
if (!['opaque', 'jwt'].includes(tokenFormat)) fail('TOKEN_FORMAT must be "opaque" or "jwt"');
const tokenPath = process.env.TOKEN_PATH || '/as/token.oauth2';
if (!tokenPath.startsWith('/')) fail('TOKEN_PATH must start with "/"');
const scopes = (process.env.SCOPES ?? 'read write').split(/\s+/).filter(Boolean);
const resourceIndicator = process.env.RESOURCE || 'https://api.dscc.test.invalid';
const parentPid = intFromEnv('PARENT_PID', 0);

const certPath = process.env.TLS_CERT;
const keyPath = process.env.TLS_KEY;
if (!certPath || !keyPath) fail('TLS_CERT and TLS_KEY must point to a PEM certificate (chain) and private key');

let tlsCert;
let tlsKey;
try {
  tlsCert = fs.readFileSync(certPath);
  tlsKey = fs.readFileSync(keyPath);
} catch (err) {
  fail(`cannot read TLS_CERT/TLS_KEY: ${err.message}`);
}

const AUTH_METHODS = new Set(['client_secret_post', 'client_secret_basic']);
const DEFAULT_CLIENTS = [
  { client_id: 'test-client-post', client_secret: 'test-secret-post', token_endpoint_auth_method: 'client_secret_post' },
  { client_id: 'test-client-basic', client_secret: 'test-secret-basic', token_endpoint_auth_method: 'client_secret_basic' },
];

function loadClients() {
  let list = DEFAULT_CLIENTS;
  if (process.env.CLIENTS_JSON) {
    try {
      list = JSON.parse(process.env.CLIENTS_JSON);
    } catch (err) {
      fail(`CLIENTS_JSON is not valid JSON: ${err.message}`);
    }
  }
  if (!Array.isArray(list) || list.length === 0) fail('CLIENTS_JSON must be a non-empty JSON array');

  const seen = new Set();
  return list.map((c, i) => {
    if (c === null || typeof c !== 'object') fail(`CLIENTS_JSON[${i}] must be an object`);
    const { client_id: id, client_secret: secret } = c;
    const method = c.token_endpoint_auth_method ?? 'client_secret_basic';
    if (typeof id !== 'string' || !id) fail(`CLIENTS_JSON[${i}].client_id must be a non-empty string`);
    if (typeof secret !== 'string' || !secret) fail(`CLIENTS_JSON[${i}].client_secret must be a non-empty string`);
    if (!AUTH_METHODS.has(method)) fail(`CLIENTS_JSON[${i}].token_endpoint_auth_method must be one of ${[...AUTH_METHODS].join(', ')}`);
    if (seen.has(id)) fail(`CLIENTS_JSON has a duplicate client_id ${JSON.stringify(id)}`);
    seen.add(id);
    return {
      client_id: id,
      client_secret: secret,
      token_endpoint_auth_method: method,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      // scopes this client may request; defaults to every declared scope
      scope: typeof c.scope === 'string' ? c.scope : scopes.join(' '),
    };
  });
}

const clients = loadClients();

// ------------------------------------------------------------ HTTPS server --

let handler = (_req, res) => {
  res.statusCode = 503;
  res.end();
};
const server = https.createServer({ cert: tlsCert, key: tlsKey }, (req, res) => handler(req, res));

// Node closes idle keep-alive connections after 5 s by default, which races
// with clients that pool connections longer (reqwest/hyper: 90 s) and makes
// requests sent ~5 s apart (e.g. with TOKEN_TTL_SECONDS=5) fail randomly with
// "connection closed before message completed". Keep them open longer.
server.keepAliveTimeout = 120_000;
server.headersTimeout = 125_000;

server.on('tlsClientError', (err) => {
  log({ event: 'tls_client_error', message: err.code || err.message });
});

server.once('error', (err) => fail(`cannot listen on ${HOST}:${port}: ${err.message}`));

await new Promise((resolve) => server.listen(port, HOST, resolve));
const actualPort = server.address().port;
const issuer = `https://${HOST}:${actualPort}`;

// ---------------------------------------------------------- oidc-provider --

// Fresh per-process signing key (used for JWT access tokens and served on the
// JWKS endpoint); avoids oidc-provider's shared development keys. RS256 like
// GreenLake when TOKEN_FORMAT=jwt; otherwise a P-256 key, which is generated
// ~100x faster than an RSA key and keeps the cold start short.
const signingAlg = tokenFormat === 'jwt' ? 'RS256' : 'ES256';
const { privateKey } = signingAlg === 'RS256'
  ? crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
  : crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingJwk = { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), use: 'sig', alg: signingAlg };

const provider = new Provider(issuer, {
  clients,
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  jwks: { keys: [signingJwk] },
  clientDefaults: {
    grant_types: ['client_credentials'],
    response_types: [],
    id_token_signed_response_alg: signingAlg,
  },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  scopes: [...new Set(['openid', ...scopes])],
  routes: { token: tokenPath },
  ttl: {
    ClientCredentials: tokenTtl,
    AccessToken: tokenTtl,
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // TOKEN_FORMAT=jwt: every client_credentials request without a
      // `resource` parameter is treated as if it named RESOURCE, which makes
      // oidc-provider issue a JWT access token for that audience.
      defaultResource: async (_ctx, _client, oneOf) => oneOf ?? (tokenFormat === 'jwt' ? resourceIndicator : undefined),
      getResourceServerInfo: async (_ctx, indicator) => ({
        scope: scopes.join(' '),
        audience: indicator,
        accessTokenTTL: tokenTtl,
        accessTokenFormat: tokenFormat,
        jwt: { sign: { alg: signingAlg } },
      }),
    },
  },
});

// Minimal request log: method, path, status, duration, client_id, grant_type
// and the OAuth error code. No headers, bodies, secrets or tokens.
provider.use(async (ctx, next) => {
  const started = process.hrtime.bigint();
  try {
    await next();
  } finally {
    const entry = {
      method: ctx.method,
      path: ctx.path,
      status: ctx.status,
      ms: Number((process.hrtime.bigint() - started) / 1000000n),
    };
    if (ctx.oidc?.client?.clientId) entry.client_id = ctx.oidc.client.clientId;
    if (ctx.oidc?.params?.grant_type) entry.grant_type = ctx.oidc.params.grant_type;
    if (ctx.status >= 400 && ctx.body && typeof ctx.body === 'object' && ctx.body.error) entry.error = ctx.body.error;
    if (ctx.state.oauthErrorDetail) entry.detail = ctx.state.oauthErrorDetail;
    log(entry);
  }
});

provider.on('server_error', (_ctx, err) => log({ event: 'server_error', message: err.message }));
// oidc-provider's internal reason (e.g. "invalid secret provided", "client
// not found"); folded into the request log line above.
provider.on('grant.error', (ctx, err) => {
  if (ctx?.state && err?.error_detail) ctx.state.oauthErrorDetail = err.error_detail;
});

handler = provider.callback();

process.stdout.write(`${JSON.stringify({ issuer, token_endpoint: `${issuer}${tokenPath}`, port: actualPort })}\n`);
log({
  event: 'listening',
  issuer,
  token_ttl_seconds: tokenTtl,
  token_format: tokenFormat,
  scopes,
  clients: clients.map((c) => ({ client_id: c.client_id, token_endpoint_auth_method: c.token_endpoint_auth_method })),
});

// ----------------------------------------------------------------- shutdown --

let stopping = false;
function shutdown(reason) {
  if (stopping) return;
  stopping = true;
  log({ event: 'shutdown', reason });
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
process.on('SIGHUP', () => shutdown('SIGHUP'));

// Optional: exit when the process that started us (e.g. a test binary) is gone.
if (parentPid > 0) {
  setInterval(() => {
    try {
      process.kill(parentPid, 0);
    } catch (err) {
      if (err.code === 'ESRCH') shutdown(`parent ${parentPid} exited`);
    }
  }, 1000).unref();
}
