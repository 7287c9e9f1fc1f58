// A real OAuth2 token server for the tokensync tests: oidc-provider, client credentials only.
//
// Usage: node oidc_server.mjs CONFIG.json   (or the JSON itself in TOKENSYNC_OIDC_CONFIG)
//
// Config (all optional except clients):
//   {
//     "port": 0,                               // 0 = pick a free port
//     "clients": [{"client_id": "...", "client_secret": "...",
//                  "token_endpoint_auth_method": "client_secret_basic", "scope": "api:read"}],
//     "scopes": ["api:read", "api:write"],
//     "ttl_seconds": 5,                        // access token lifetime
//     "resource": {"identifier": "https://api.example.test", "scope": "api:read api:write",
//                  "format": "jwt"},            // RFC 8707 resource indicator
//     "issuance_log": "/path/issued.jsonl"     // one JSON line per issued token
//     "strict_auth_method": true               // see strictAuthMethod below
//     "mtls": {"cert": PEM, "key": PEM, "client_ca": PEM}  // also serve HTTPS that asks
//                                              // for client certificates (tls_client_auth)
//   }
//
// Clients may use every RFC 7523 / RFC 8705 method: private_key_jwt (register "jwks"),
// client_secret_jwt, and tls_client_auth (register "tls_client_auth_san_email" or
// "tls_client_auth_san_dns"; only on the mtls port).
//
// Once listening on 127.0.0.1 it prints one JSON line to stdout:
//   {"ready": true, "port": N, "issuer": "...", "token_url": "..."}
// plus "mtls_token_url": "https://127.0.0.1:M/token" when "mtls" is configured.
//
// Admin endpoints (same port, under /admin; tests only, never exposed beyond 127.0.0.1):
//   PUT    /admin/clients/<id>          body: client metadata (adds or replaces the client)
//   POST   /admin/clients/<id>/secret   body: {"client_secret": "..."} (rotates the secret)
//   DELETE /admin/clients/<id>          revokes the client
//   PUT    /admin/ttl                   body: {"seconds": N}
//   PUT    /admin/mode                  body: {"mode": "healthy" | "500" | "429", "retry_after": N}
//   GET    /admin/issued                the issuance log as a JSON array

import { X509Certificate, createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { appendFileSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createTLSServer } from 'node:https';
import { parse as parseQuery } from 'node:querystring';

import Provider from 'oidc-provider';

function loadConfig() {
  if (process.argv[2]) return JSON.parse(readFileSync(process.argv[2], 'utf8'));
  if (process.env.TOKENSYNC_OIDC_CONFIG) return JSON.parse(process.env.TOKENSYNC_OIDC_CONFIG);
  throw new Error('pass a config file path or set TOKENSYNC_OIDC_CONFIG');
}

const config = loadConfig();
const state = {
  ttl: config.ttl_seconds ?? 60,
  mode: 'healthy',
  retryAfter: 1,
  clients: new Map(),
  issued: [],
};

function clientMetadata(id, meta) {
  return {
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    ...meta,
    client_id: id,
  };
}

for (const client of config.clients ?? []) {
  state.clients.set(client.client_id, clientMetadata(client.client_id, client));
}

// Clients live in this adapter rather than in the static `clients` option so that secrets can
// be rotated at runtime: oidc-provider caches adapter clients by a hash of their metadata.
const stores = new Map();
class Adapter {
  constructor(name) {
    this.name = name;
    if (!stores.has(name)) stores.set(name, new Map());
    this.store = stores.get(name);
  }

  async find(id) {
    if (this.name === 'Client') return state.clients.get(id);
    return this.store.get(id);
  }

  async upsert(id, payload) {
    this.store.set(id, payload);
  }

  async destroy(id) {
    this.store.delete(id);
  }

  async findByUid() {}

  async findByUserCode() {}

  async consume(id) {
    const entry = this.store.get(id);
    if (entry) entry.consumed = Math.floor(Date.now() / 1000);
  }

  async revokeByGrantId() {}
}

function logIssued(ctx) {
  const body = ctx.body;
  if (ctx.status !== 200 || !body || typeof body.access_token !== 'string') return;
  const issuedAt = Date.now() / 1000;
  const entry = {
    server: 'oidc-provider',
    client_id: ctx.oidc?.client?.clientId ?? null,
    token_sha256: createHash('sha256').update(body.access_token).digest('hex'),
    issued_at: issuedAt,
    expires_at: issuedAt + body.expires_in,
    expires_in: body.expires_in,
    scope: body.scope ?? null,
  };
  state.issued.push(entry);
  if (config.issuance_log) appendFileSync(config.issuance_log, `${JSON.stringify(entry)}\n`);
}

function readJSON(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      try {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve(text ? JSON.parse(text) : {});
      } catch (err) {
        reject(err);
      }
    });
    req.on('error', reject);
  });
}

function send(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(text);
}

async function admin(req, res, path) {
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent); // ['admin', ...]
  const [, what, id, sub] = parts;
  if (what === 'issued' && req.method === 'GET') return send(res, 200, state.issued);
  const body = req.method === 'GET' || req.method === 'DELETE' ? {} : await readJSON(req);
  if (what === 'ttl' && req.method === 'PUT') {
    state.ttl = Number(body.seconds);
    return send(res, 200, { ttl_seconds: state.ttl });
  }
  if (what === 'mode' && req.method === 'PUT') {
    state.mode = String(body.mode);
    state.retryAfter = body.retry_after ?? 1;
    return send(res, 200, { mode: state.mode });
  }
  if (what === 'clients' && id) {
    if (req.method === 'PUT' && !sub) {
      state.clients.set(id, clientMetadata(id, body));
      return send(res, 200, { client_id: id });
    }
    if (req.method === 'POST' && sub === 'secret' && state.clients.has(id)) {
      state.clients.set(id, { ...state.clients.get(id), client_secret: body.client_secret });
      return send(res, 200, { client_id: id });
    }
    if (req.method === 'DELETE' && !sub) {
      state.clients.delete(id);
      return send(res, 200, { client_id: id });
    }
  }
  return send(res, 404, { error: 'unknown admin request' });
}

// Injected failures for operator tests: the token endpoint answers like a broken server.
function injectedFailure(res) {
  if (state.mode === '500') {
    send(res, 500, { error: 'server_error', error_description: 'injected failure' });
    return true;
  }
  if (state.mode === '429') {
    send(res, 429, { error: 'slow_down' }, { 'retry-after': String(state.retryAfter) });
    return true;
  }
  return false;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function basicClientId(authorization) {
  const [scheme, value] = (authorization ?? '').split(' ');
  if (scheme?.toLowerCase() !== 'basic' || !value) return undefined;
  const decoded = Buffer.from(value, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  try {
    return decodeURIComponent(decoded.slice(0, colon).replace(/\+/g, '%20'));
  } catch {
    return undefined;
  }
}

// oidc-provider accepts client_secret_basic and client_secret_post interchangeably; many real
// servers do not, so by default a client only authenticates with the method it registered.
function wrongAuthMethod(req, body) {
  const form = (req.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded')
    ? parseQuery(body.toString('utf8'))
    : {};
  const viaHeader = req.headers.authorization !== undefined;
  const clientId = viaHeader ? basicClientId(req.headers.authorization) : form.client_id;
  const client = state.clients.get(clientId);
  if (!client || (!viaHeader && form.client_secret === undefined)) return false;
  const used = viaHeader ? 'client_secret_basic' : 'client_secret_post';
  return client.token_endpoint_auth_method !== used;
}

async function tokenEndpoint(req, res, callback) {
  const body = await readBody(req);
  if (config.strict_auth_method !== false && wrongAuthMethod(req, body)) {
    send(res, 401, {
      error: 'invalid_client',
      error_description: 'the provided authentication mechanism does not match the registered client authentication method',
    });
    return;
  }
  req.body = body; // oidc-provider uses an already read body when the stream is consumed
  callback(req, res);
}

// RFC 8705 tls_client_auth: the certificate the client presented on the mtls port.
function peerCertificate(ctx) {
  const socket = ctx.req.socket;
  if (typeof socket.getPeerCertificate !== 'function') return undefined;
  const peer = socket.getPeerCertificate();
  return peer && peer.raw ? peer : undefined;
}

const mTLS = {
  enabled: true,
  tlsClientAuth: true,
  getCertificate: (ctx) => {
    const peer = peerCertificate(ctx);
    return peer ? new X509Certificate(peer.raw).toString() : undefined;
  },
  certificateAuthorized: (ctx) => ctx.req.socket.authorized === true,
  certificateSubjectMatches: (ctx, property, expected) => {
    const names = (peerCertificate(ctx)?.subjectaltname ?? '').split(', ');
    const prefix = { tls_client_auth_san_email: 'email:', tls_client_auth_san_dns: 'DNS:' }[property];
    return prefix !== undefined && names.includes(`${prefix}${expected}`);
  },
};

let handler = (_req, res) => send(res, 503, { error: 'starting' });
const server = createServer((req, res) => handler(req, res));
const tlsServer = config.mtls
  ? createTLSServer(
    {
      cert: config.mtls.cert,
      key: config.mtls.key,
      ca: config.mtls.client_ca,
      requestCert: true,
      rejectUnauthorized: false, // oidc-provider decides (certificateAuthorized)
    },
    (req, res) => handler(req, res),
  )
  : undefined;

server.listen(config.port ?? 0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const resource = config.resource;
  const signingKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;

  const provider = new Provider(issuer, {
    adapter: Adapter,
    clientBasedCORS: () => false,
    cookies: { keys: [randomBytes(32).toString('hex')] },
    jwks: { keys: [{ ...signingKey.export({ format: 'jwk' }), kid: 'test', use: 'sig' }] },
    scopes: config.scopes ?? ['api:read', 'api:write'],
    clientAuthMethods: [
      'client_secret_basic',
      'client_secret_post',
      'client_secret_jwt',
      'private_key_jwt',
      'tls_client_auth',
      'none',
    ],
    enabledJWA: {
      clientAuthSigningAlgValues: ['HS256', 'HS384', 'HS512', 'RS256', 'PS256', 'ES256', 'ES384'],
    },
    features: {
      mTLS,
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, identifier) => {
          if (!resource || identifier !== resource.identifier) {
            throw new Provider.errors.InvalidTarget();
          }
          return {
            scope: resource.scope ?? 'api:read',
            audience: resource.identifier,
            accessTokenTTL: state.ttl,
            accessTokenFormat: resource.format ?? 'jwt',
          };
        },
      },
    },
    ttl: {
      ClientCredentials: () => state.ttl,
      AccessToken: () => state.ttl,
    },
  });
  provider.proxy = false;
  provider.on('server_error', (_ctx, err) => process.stderr.write(`server_error: ${err}\n`));
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path === '/token') logIssued(ctx);
  });

  const callback = provider.callback();
  handler = (req, res) => {
    const path = new URL(req.url, issuer).pathname;
    if (path === '/admin' || path.startsWith('/admin/')) {
      admin(req, res, path).catch((err) => send(res, 400, { error: String(err) }));
      return;
    }
    if (path === '/token' && req.method === 'POST') {
      if (injectedFailure(res)) return;
      tokenEndpoint(req, res, callback).catch((err) => send(res, 400, { error: String(err) }));
      return;
    }
    callback(req, res);
  };

  const ready = { ready: true, port, issuer, token_url: `${issuer}/token` };
  if (!tlsServer) {
    process.stdout.write(`${JSON.stringify(ready)}\n`);
    return;
  }
  tlsServer.listen(0, '127.0.0.1', () => {
    ready.mtls_token_url = `https://127.0.0.1:${tlsServer.address().port}/token`;
    process.stdout.write(`${JSON.stringify(ready)}\n`);
  });
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
