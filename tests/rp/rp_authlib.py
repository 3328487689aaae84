"""A second relying party nobody here wrote: Python authlib's OAuth 2.0
client and its JOSE verification of the ID token (CodeIDToken: iss, aud,
exp, iat, nonce, auth_time). Input: one JSON argument; output: one JSON
line. The sign-in cookie comes from the Rust test."""
import json
import sys

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.jose import JsonWebKey, JsonWebToken
from authlib.oidc.core import CodeIDToken
from authlib.common.security import generate_token

cfg = json.loads(sys.argv[1])
out = {}
meta = requests.get(cfg["issuer"] + "/.well-known/openid-configuration", timeout=10).json()
out["issuer"] = meta["issuer"]
session = OAuth2Session(
    cfg["client_id"],
    cfg["client_secret"],
    scope=cfg["scope"],
    redirect_uri=cfg["redirect_uri"],
    token_endpoint_auth_method="client_secret_basic",
    code_challenge_method="S256",
)
verifier = generate_token(64)
nonce = generate_token(20)
url, state = session.create_authorization_url(
    meta["authorization_endpoint"], nonce=nonce, code_verifier=verifier
)
r = requests.get(url, headers={"cookie": cfg["cookie"]}, allow_redirects=False, timeout=10)
location = r.headers["location"]
token = session.fetch_token(
    meta["token_endpoint"],
    authorization_response=location,
    code_verifier=verifier,
    state=state,
)
jwks = JsonWebKey.import_key_set(requests.get(meta["jwks_uri"], timeout=10).json())
claims = JsonWebToken([cfg["alg"]]).decode(
    token["id_token"],
    key=jwks,
    claims_cls=CodeIDToken,
    claims_options={"iss": {"essential": True, "value": meta["issuer"]}},
    claims_params={"nonce": nonce, "client_id": cfg["client_id"]},
)
claims.validate(leeway=120)
out["claims"] = dict(claims)
out["nonce_sent"] = nonce
ui = session.get(meta["userinfo_endpoint"], timeout=10)
out["userinfo_status"] = ui.status_code
out["userinfo"] = ui.json()
rev = session.revoke_token(
    meta["revocation_endpoint"], token=token["refresh_token"], token_type_hint="refresh_token"
)
out["revoke_status"] = rev.status_code
try:
    session.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
    out["refresh_after_revoke"] = "accepted"
except Exception as e:  # authlib raises OAuthError with .error
    out["refresh_after_revoke"] = getattr(e, "error", str(e))
print(json.dumps(out))
