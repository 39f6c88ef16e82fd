// A real OpenID Connect provider (panva's certified oidc-provider) for the tests: the gateway's HTTP API is
// tested with JWT access tokens that a real authorization server issued through the OAuth 2.0
// client-credentials grant, not with tokens the tests forged themselves.
// oidc-provider 8.x (package.json) because 9.x supports only Node.js 22+ and the machines run Node.js 20;
// this script also runs unchanged on 9.x.
//
//   node provider.mjs [PORT]        PORT also from OIDC_PORT; 0 (the default) picks a free port
//
// Environment:
//   OIDC_CLIENTS        JSON array of clients (or OIDC_CLIENTS_FILE: a file holding it), each
//                       {"client_id", "client_secret", "roles": [...], "scope"?, "resource"?, "ttl"?}:
//                       roles become the access token's "roles" claim; resource is the client's default
//                       audience; ttl (seconds) overrides OIDC_TOKEN_TTL for its tokens
//   OIDC_DEFAULT_RESOURCE   the audience of tokens requested without a resource indicator (urn:dicom-gateway)
//   OIDC_TOKEN_TTL      access token lifetime in seconds (300)
//   OIDC_SIGNING_ALG    RS256 (default) or ES256: which of the two generated keys signs access tokens
//
// Prints "READY <issuer>" on stdout once listening, and nothing else there (diagnostics go to stderr).
// Exits when stdin closes (the test process died) or on SIGTERM/SIGINT.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const HOST = '127.0.0.1';
const port = Number(process.argv[2] ?? process.env.OIDC_PORT ?? 0);
const defaultResource = process.env.OIDC_DEFAULT_RESOURCE || 'urn:dicom-gateway';
const tokenTTL = Number(process.env.OIDC_TOKEN_TTL || 300);
const signingAlg = process.env.OIDC_SIGNING_ALG || 'RS256';

function fail(message) {
  process.stderr.write(`provider.mjs: ${message}\n`);
  process.exit(2);
}

if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`bad port ${port}`);
if (!Number.isInteger(tokenTTL) || tokenTTL < 1) fail(`bad OIDC_TOKEN_TTL ${process.env.OIDC_TOKEN_TTL}`);
if (!['RS256', 'ES256'].includes(signingAlg)) fail(`OIDC_SIGNING_ALG must be RS256 or ES256, not ${signingAlg}`);

const clients = JSON.parse(
  process.env.OIDC_CLIENTS_FILE ? readFileSync(process.env.OIDC_CLIENTS_FILE, 'utf8') : process.env.OIDC_CLIENTS || '[]',
);
if (!Array.isArray(clients) || clients.length === 0) fail('no clients: set OIDC_CLIENTS or OIDC_CLIENTS_FILE');
const byId = new Map();
for (const client of clients) {
  if (!client.client_id || !client.client_secret || !Array.isArray(client.roles)) {
    fail(`a client needs client_id, client_secret and a roles array: ${JSON.stringify(client)}`);
  }
  byId.set(client.client_id, client);
}

// Fresh keys each run: a token from an earlier run must not verify, and no key material lives in the repo.
function signingKey(kid, type, options) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig' };
}
const jwks = {
  keys: [
    signingKey(`rsa-${randomBytes(4).toString('hex')}`, 'rsa', { modulusLength: 2048 }),
    signingKey(`ec-${randomBytes(4).toString('hex')}`, 'ec', { namedCurve: 'P-256' }),
  ],
};

// The server listens first so that port 0 works: the issuer needs the port the kernel chose.
const server = createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, HOST, resolve);
});
const issuer = `http://${HOST}:${server.address().port}`;

const scopes = new Set(clients.flatMap((client) => (client.scope ? client.scope.split(' ') : [])));
const ttlOf = (client) => byId.get(client?.clientId)?.ttl ?? tokenTTL;

const provider = new Provider(issuer, {
  clients: clients.map((client) => ({
    client_id: client.client_id,
    client_secret: client.client_secret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: client.token_endpoint_auth_method || 'client_secret_basic',
    ...(client.scope ? { scope: client.scope } : {}),
  })),
  jwks,
  scopes: [...scopes],
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, client) => byId.get(client?.clientId)?.resource || defaultResource,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator, client) => ({
        scope: byId.get(client?.clientId)?.scope || '',
        audience: resourceIndicator,
        accessTokenFormat: 'jwt',
        accessTokenTTL: ttlOf(client),
        jwt: { sign: { alg: signingAlg } },
      }),
    },
  },
  ttl: { ClientCredentials: (ctx, token, client) => ttlOf(client) },
  extraTokenClaims: (ctx, token) => ({ roles: byId.get(token.clientId)?.roles ?? [] }),
});
provider.on('server_error', (ctx, error) => process.stderr.write(`server_error: ${error?.stack ?? error}\n`));
provider.on('grant.error', (ctx, error) => process.stderr.write(`grant.error: ${error?.message} ${error?.error_description ?? ''}\n`));
server.on('request', provider.callback());

function stop() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.on('close', stop);
process.stdin.on('error', stop);
process.stdin.resume();

process.stdout.write(`READY ${issuer}\n`);
