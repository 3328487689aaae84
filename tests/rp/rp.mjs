// A relying party nobody here wrote: openid-client 6 (a certified RP
// library) runs the flows of tests/it/oidc_provider.rs against a running
// gateway. Input: one JSON argument; output: one JSON line on stdout with
// what each step gave (or the error it raised). The Rust test asserts.
//
// The browser's part (the sign-in) is the test's: it hands over the
// session cookie, and this script follows the authorization redirect with
// it, exactly as a browser would.
import * as oc from 'openid-client';

const cfg = JSON.parse(process.argv[2]);
const out = {};
const step = async (name, f) => {
  try {
    out[name] = { ok: await f() };
  } catch (e) {
    out[name] = { error: String(e && (e.error || e.code || e.message)), message: String(e && e.message) };
  }
  return out[name].ok;
};

const metadata = { id_token_signed_response_alg: cfg.alg };
if (cfg.client_secret) metadata.client_secret = cfg.client_secret;
const auth = cfg.client_secret ? oc.ClientSecretBasic(cfg.client_secret) : oc.None();
const config = await oc.discovery(new URL(cfg.issuer), cfg.client_id, metadata, auth, {
  execute: [oc.allowInsecureRequests],
});
out.discovered_issuer = config.serverMetadata().issuer;

const verifier = oc.randomPKCECodeVerifier();
const challenge = await oc.calculatePKCECodeChallenge(verifier);
const nonce = oc.randomNonce();
const state = oc.randomState();
const url = oc.buildAuthorizationUrl(config, {
  redirect_uri: cfg.redirect_uri,
  scope: cfg.scope,
  code_challenge: challenge,
  code_challenge_method: 'S256',
  nonce,
  state,
});
const res = await fetch(url, { headers: { cookie: cfg.cookie }, redirect: 'manual' });
const location = res.headers.get('location');
out.authorize_status = res.status;
out.authorize_location_origin = location ? new URL(location, cfg.issuer).origin : null;

const tokens = await step('code', async () => {
  const t = await oc.authorizationCodeGrant(config, new URL(location), {
    pkceCodeVerifier: verifier,
    expectedNonce: nonce,
    expectedState: state,
    idTokenExpected: true,
  });
  return { ...t, claims: t.claims() };
});
if (tokens) {
  out.nonce_sent = nonce;
  await step('userinfo', () => oc.fetchUserInfo(config, tokens.access_token, tokens.claims.sub));
  const refreshed = await step('refresh', async () => {
    const t = await oc.refreshTokenGrant(config, tokens.refresh_token);
    return { ...t, claims: t.claims() };
  });
  // The first refresh token again: reuse, which ends the session.
  await step('refresh_reuse', () => oc.refreshTokenGrant(config, tokens.refresh_token));
  if (refreshed) {
    await step('refresh_after_reuse', () => oc.refreshTokenGrant(config, refreshed.refresh_token));
  }
  out.end_session_url = oc.buildEndSessionUrl(config, {
    id_token_hint: tokens.id_token,
    post_logout_redirect_uri: cfg.post_logout_redirect_uri || '',
    state: 'bye',
  }).href;
}
process.stdout.write(JSON.stringify(out) + '\n');
