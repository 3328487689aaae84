// Passkeys on the Portcullis portal: registration on the sessions page and
// sign-in on the sign-in page. A static file, so the pages' CSP allows no
// inline script. Binary WebAuthn fields travel as base64url.
(function () {
  'use strict';

  function toBuf(s) {
    s = String(s).replace(/-/g, '+').replace(/_/g, '/');
    while (s.length % 4) s += '=';
    var bin = atob(s);
    var out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }

  function toB64u(buf) {
    var bytes = new Uint8Array(buf);
    var s = '';
    for (var i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function csrf() {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.getAttribute('content') : '';
  }

  function say(text) {
    var el = document.getElementById('passkey-status');
    if (el) el.textContent = text;
  }

  async function post(url, body) {
    var r = await fetch(url, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'content-type': 'application/json', 'x-csrf-token': csrf() },
      body: JSON.stringify(body)
    });
    var v = null;
    try { v = await r.json(); } catch (e) { v = null; }
    return { ok: r.ok, body: v };
  }

  function failed(res, fallback) {
    // A sign-in too old for adding a passkey: confirm it is you first.
    if (res.body && res.body.error === 'reauth_required') {
      return location.assign('/auth/ui/reauth');
    }
    say((res.body && res.body.message) || fallback);
  }

  async function register() {
    say('Waiting for your authenticator…');
    var start = await post('/auth/ui/passkeys/register/start', {});
    if (!start.ok) return failed(start, 'The passkey could not be set up.');
    var pk = start.body.options.publicKey;
    pk.challenge = toBuf(pk.challenge);
    pk.user.id = toBuf(pk.user.id);
    (pk.excludeCredentials || []).forEach(function (c) { c.id = toBuf(c.id); });
    // Discoverable, so that it signs in without an email address.
    pk.authenticatorSelection = Object.assign({}, pk.authenticatorSelection || {}, {
      residentKey: 'required', requireResidentKey: true, userVerification: 'required'
    });
    var cred;
    try {
      cred = await navigator.credentials.create({ publicKey: pk });
    } catch (e) {
      return say('No passkey was created.');
    }
    var name = document.getElementById('passkey-name');
    var fin = await post('/auth/ui/passkeys/register/finish', {
      ceremony: start.body.ceremony,
      name: name ? name.value : '',
      credential: {
        id: cred.id,
        rawId: toB64u(cred.rawId),
        type: cred.type,
        extensions: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
        response: {
          attestationObject: toB64u(cred.response.attestationObject),
          clientDataJSON: toB64u(cred.response.clientDataJSON),
          transports: cred.response.getTransports ? cred.response.getTransports() : []
        }
      }
    });
    if (!fin.ok) return failed(fin, 'The passkey could not be saved.');
    location.assign('/auth/ui/sessions?notice=passkey-added');
  }

  async function signIn() {
    say('Waiting for your passkey…');
    var start = await post('/auth/ui/passkeys/login/start', {});
    if (!start.ok) return failed(start, 'Passkey sign-in is not available.');
    var pk = start.body.options.publicKey;
    pk.challenge = toBuf(pk.challenge);
    (pk.allowCredentials || []).forEach(function (c) { c.id = toBuf(c.id); });
    var a;
    try {
      a = await navigator.credentials.get({ publicKey: pk });
    } catch (e) {
      return say('No passkey was used.');
    }
    var rd = document.querySelector('input[name="rd"]');
    var fin = await post('/auth/ui/passkeys/login/finish', {
      ceremony: start.body.ceremony,
      rd: rd ? rd.value : '/',
      credential: {
        id: a.id,
        rawId: toB64u(a.rawId),
        type: a.type,
        extensions: a.getClientExtensionResults ? a.getClientExtensionResults() : {},
        response: {
          authenticatorData: toB64u(a.response.authenticatorData),
          clientDataJSON: toB64u(a.response.clientDataJSON),
          signature: toB64u(a.response.signature),
          userHandle: a.response.userHandle ? toB64u(a.response.userHandle) : null
        }
      }
    });
    if (!fin.ok || !fin.body || !fin.body.redirect) return failed(fin, 'The passkey was not accepted.');
    location.assign(fin.body.redirect);
  }

  function bind(id, fn) {
    var el = document.getElementById(id);
    if (!el) return;
    if (!window.PublicKeyCredential) {
      el.disabled = true;
      say('This browser does not support passkeys.');
      return;
    }
    el.addEventListener('click', function () {
      fn().catch(function () { say('Something went wrong; try again.'); });
    });
  }

  bind('passkey-register', register);
  bind('passkey-login', signIn);
})();
