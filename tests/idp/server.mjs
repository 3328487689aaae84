// The outside OpenID Provider of the federation tests: the npm package
// `oidc-provider` (pinned in package.json / package-lock.json beside this
// file, installed under target/ by `.ci/deps --test` or by the test itself),
// nobody here wrote its protocol code. This script only configures it and
// adds what a test needs around it:
//
// - a minimal login page (a user id) and consent page that a plain HTTP
//   client can drive (tests/it/common/idp.rs follows them);
// - accounts with any claims (`email`, `email_verified`, `groups`, ...) and
//   the `amr` their sign-in asserts;
// - clients registered at run time (the gateway's port, hence its
//   back-channel logout URI, is known only once it runs);
// - back-channel logout enabled: ending a session at `/session/end` POSTs a
//   `logout_token` to every client of that session;
// - test hooks under `/__test/` (loopback test use only): register clients
//   and accounts, sign an arbitrary JWT with the provider's key (or with a
//   key it does not publish), make the token endpoint misbehave (re-signed
//   id_token with other claims), trigger a back-channel logout directly,
//   and read what was delivered.
//
// Usage: node server.mjs '<json>' with IDP_NODE_MODULES=<node_modules dir>;
// json = { port, issuer?, accounts: { id: { claims: {...}, amr: [...] } },
//          clients: [ client metadata ] }.
// Prints "READY <issuer>" on stdout once it listens.

import http from 'node:http';
import crypto from 'node:crypto';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const modules = process.env.IDP_NODE_MODULES;
if (!modules) {
  console.error('IDP_NODE_MODULES is not set');
  process.exit(2);
}
const load = (rel) => import(pathToFileURL(path.join(modules, rel)).href);
const { default: Provider } = await load('oidc-provider/lib/index.js');
const jose = await load('jose/dist/webapi/index.js');

const config = JSON.parse(process.argv[2] || '{}');
const port = Number(config.port);
const issuer = config.issuer || `http://127.0.0.1:${port}`;

// The provider's signing key (published in its JWKS) and another one it
// never publishes (a forged signature).
function rsaKey(kid) {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
}
const signingJwk = rsaKey(`idp-${crypto.randomBytes(4).toString('hex')}`);
// Same kid as the real key: a verifier must check the signature, not trust the kid.
const otherJwk = rsaKey(signingJwk.kid);
const signers = {
  provider: await jose.importJWK(signingJwk, 'RS256'),
  other: await jose.importJWK(otherJwk, 'RS256'),
};

const accounts = new Map(Object.entries(config.accounts || {}));
const events = [];
let tamper = {};

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const provider = new Provider(issuer, {
  findAccount: async (_ctx, id) => {
    if (!accounts.has(id)) return undefined;
    return {
      accountId: id,
      // Read at every use: a test may change the claims between sign-ins.
      claims: async () => ({ ...(accounts.get(id)?.claims || {}), sub: id }),
    };
  },
  claims: {
    acr: null,
    auth_time: null,
    iss: null,
    sid: null,
    // amr with every id_token (as Azure AD and others send it), not only
    // when the claims parameter asks for it.
    openid: ['sub', 'amr'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username', 'groups', 'roles'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  // Scope claims in the id_token too (Google and most IdPs do this).
  conformIdTokenClaims: false,
  responseTypes: ['code'],
  // PKCE is optional for confidential clients (GitHub-style oauth2 ones may
  // not send it); the gateway sends S256 anyway.
  pkce: { required: () => false },
  cookies: { keys: [crypto.randomBytes(16).toString('hex')] },
  jwks: { keys: [signingJwk] },
  features: {
    devInteractions: { enabled: false },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource: async (ctx, form) => {
        ctx.body = `<!DOCTYPE html><html><head><title>Sign out</title></head><body>
${form}<button type="submit" form="op.logoutForm" name="logout" value="yes">Sign out</button></body></html>`;
      },
      postLogoutSuccessSource: async (ctx) => {
        ctx.body = '<!DOCTYPE html><html><head><title>Signed out</title></head><body>Signed out</body></html>';
      },
    },
  },
  // The back-channel logout receivers of the tests are on loopback, which
  // the provider's SSRF guard (a special-use address dispatcher) refuses:
  // this provider talks to loopback only, so its plain fetch is used.
  fetch: (url, options) => {
    const { dispatcher: _guard, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  interactions: { url: async (_ctx, interaction) => `/interaction/${interaction.uid}` },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><html><head><title>Error</title></head><body><pre id="error">${esc(JSON.stringify(out))}</pre></body></html>`;
  },
});
provider.on('backchannel.success', (_ctx, client, accountId, sid) => {
  events.push({ event: 'backchannel.success', client_id: client.clientId, sub: accountId, sid });
});
provider.on('backchannel.error', (_ctx, err, client, accountId, sid) => {
  events.push({ event: 'backchannel.error', client_id: client.clientId, sub: accountId, sid, error: String(err.message) });
});
provider.on('server_error', (_ctx, err) => console.error('server_error', err));

// A token response whose id_token is re-signed with other claims (a test
// set `tamper.id_token = { set: {...}, remove: [...], key: "provider"|"other" }`).
provider.use(async (ctx, next) => {
  await next();
  const t = tamper.id_token;
  if (!t && ctx.path === '/token' && ctx.status === 200 && ctx.body && ctx.body.id_token) {
    // What was issued (a test may need the sid the provider chose).
    events.push({ event: 'id_token', claims: jose.decodeJwt(ctx.body.id_token) });
  }
  if (t && ctx.path === '/token' && ctx.status === 200 && ctx.body && ctx.body.id_token) {
    const [h] = ctx.body.id_token.split('.');
    const header = JSON.parse(Buffer.from(h, 'base64url').toString());
    const payload = jose.decodeJwt(ctx.body.id_token);
    Object.assign(payload, t.set || {});
    for (const k of t.remove || []) delete payload[k];
    const jwt = await new jose.SignJWT(payload)
      .setProtectedHeader({ ...header, ...(t.header || {}) })
      .sign(signers[t.key || 'provider']);
    ctx.body = { ...ctx.body, id_token: jwt };
    events.push({ event: 'tampered', claims: payload });
  }
});

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString();
}

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}
const sendJson = (res, status, v) => send(res, status, 'application/json', JSON.stringify(v));
const page = (title, inner) => `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${esc(title)}</title></head><body><h1>${esc(title)}</h1>${inner}</body></html>`;

// The login and consent pages.
async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction mismatch');
  const { prompt, params } = details;
  if (req.method === 'GET' && !action) {
    if (prompt.name === 'login') {
      return send(res, 200, 'text/html', page(`Sign in to ${params.client_id}`,
        `<form method="post" action="/interaction/${esc(uid)}/login"><label>User <input name="user" autofocus></label><button type="submit">Sign in</button></form>`));
    }
    const scopes = [...(prompt.details.missingOIDCScope || [])].join(' ');
    return send(res, 200, 'text/html', page(`Allow ${params.client_id}?`,
      `<p id="scopes">${esc(scopes)}</p><form method="post" action="/interaction/${esc(uid)}/confirm"><input type="hidden" name="consent" value="yes"><button type="submit">Allow</button></form>
<form method="post" action="/interaction/${esc(uid)}/abort"><button type="submit">Deny</button></form>`));
  }
  if (req.method !== 'POST') return send(res, 405, 'text/plain', 'method');
  const form = new URLSearchParams(await readBody(req));
  if (action === 'login') {
    const user = form.get('user') || '';
    if (prompt.name !== 'login' || !accounts.has(user)) {
      return send(res, 400, 'text/html', page('Unknown user', `<p id="error">no account ${esc(user)}</p>`));
    }
    const acct = accounts.get(user);
    return provider.interactionFinished(req, res, {
      login: { accountId: user, amr: acct.amr || ['pwd'], ...(acct.acr ? { acr: acct.acr } : {}) },
    }, { mergeWithLastSubmission: false });
  }
  if (action === 'confirm') {
    if (prompt.name !== 'consent') return send(res, 400, 'text/plain', 'not a consent prompt');
    const { details: missing } = prompt;
    const { accountId } = details.session;
    let grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId, clientId: params.client_id });
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    if (missing.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, details.grantId ? {} : { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  if (action === 'abort') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'the user denied the request',
    }, { mergeWithLastSubmission: false });
  }
  return send(res, 404, 'text/plain', 'no such action');
}

async function upsertClient(meta) {
  const m = {
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    ...meta,
  };
  if (m.backchannel_logout_uri && m.backchannel_logout_session_required === undefined) {
    m.backchannel_logout_session_required = true;
  }
  await provider.Client.adapter.upsert(m.client_id, m);
  // Validates the metadata now (the provider throws on an invalid client).
  const c = await provider.Client.find(m.client_id);
  if (!c) throw new Error(`client ${m.client_id} not stored`);
}

// Test hooks: loopback, for the test that started this process.
async function hook(req, res, name) {
  const body = req.method === 'POST' ? JSON.parse((await readBody(req)) || '{}') : {};
  switch (name) {
    case 'clients':
      for (const c of Array.isArray(body) ? body : [body]) await upsertClient(c);
      return sendJson(res, 200, { ok: true });
    case 'accounts':
      for (const [id, a] of Object.entries(body)) accounts.set(id, a);
      return sendJson(res, 200, { ok: true });
    case 'tamper':
      tamper = body;
      return sendJson(res, 200, { ok: true });
    case 'sign': {
      const jwt = await new jose.SignJWT(body.payload || {})
        .setProtectedHeader({ alg: 'RS256', kid: signingJwk.kid, ...(body.header || {}) })
        .sign(signers[body.key || 'provider']);
      return sendJson(res, 200, { jwt });
    }
    case 'backchannel': {
      const client = await provider.Client.find(body.client_id);
      if (!client) return sendJson(res, 404, { error: 'no such client' });
      try {
        await client.backchannelLogout(body.sub, body.sid);
        events.push({ event: 'backchannel.success', client_id: body.client_id, sub: body.sub, sid: body.sid });
        return sendJson(res, 200, { ok: true });
      } catch (e) {
        events.push({ event: 'backchannel.error', client_id: body.client_id, sub: body.sub, sid: body.sid, error: String(e.message) });
        return sendJson(res, 200, { ok: false, error: String(e.message) });
      }
    }
    case 'events':
      return sendJson(res, 200, events);
    default:
      return sendJson(res, 404, { error: 'no such hook' });
  }
}

const callback = provider.callback();
const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    const m = url.pathname.match(/^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|confirm|abort))?$/);
    if (m) return await interaction(req, res, m[1], m[2]);
    const t = url.pathname.match(/^\/__test\/([a-z]+)$/);
    if (t) return await hook(req, res, t[1]);
    return callback(req, res);
  } catch (e) {
    console.error(e);
    if (!res.headersSent) send(res, 500, 'text/plain', String(e.message || e));
    else res.end();
  }
});
server.listen(port, '127.0.0.1', async () => {
  try {
    for (const c of config.clients || []) await upsertClient(c);
  } catch (e) {
    console.error('invalid client', e);
    process.exit(3);
  }
  process.stdout.write(`READY ${issuer}\n`);
});
// The test's handle kills this process; a closed stdin (the test process
// died) ends it too.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
