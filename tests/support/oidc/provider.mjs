// A real OpenID Provider (panva/oidc-provider) for Strongroom's tests.
//
// DEV/TEST ONLY: plain http on 127.0.0.1, in-memory storage, a signing key
// generated at start-up, and a login form that accepts anybody.
//
// Configuration (environment variables):
//   OIDC_PORT           port to listen on (127.0.0.1 only)           required
//   OIDC_CLIENT_ID      the one confidential client's client_id     required
//   OIDC_CLIENT_SECRET  its client_secret                          required
//   OIDC_REDIRECT_URIS  comma-separated redirect_uris              required
//   OIDC_CONFORM_ID_TOKEN_CLAIMS
//                       "1" to keep oidc-provider's default of putting profile/email
//                       claims only in userinfo for the code flow; by default they are
//                       put in the id_token too (as most IdPs do).
//
// Prints "READY <issuer>" on stdout once listening.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import * as http from 'node:http';

import Provider from 'oidc-provider';

const ACR_SFA = 'https://refeds.org/profile/sfa';
const ACR_MFA = 'https://refeds.org/profile/mfa';
const DEFAULT_AFFILIATION = 'member@example.org';

function requiredEnv(name) {
  const value = process.env[name];
  if (!value) {
    process.stderr.write(`provider.mjs: environment variable ${name} is required\n`);
    process.exit(2);
  }
  return value;
}

const port = Number.parseInt(requiredEnv('OIDC_PORT'), 10);
const clientId = requiredEnv('OIDC_CLIENT_ID');
const clientSecret = requiredEnv('OIDC_CLIENT_SECRET');
const redirectUris = requiredEnv('OIDC_REDIRECT_URIS')
  .split(',')
  .map((uri) => uri.trim())
  .filter(Boolean);
const conformIdTokenClaims = process.env.OIDC_CONFORM_ID_TOKEN_CLAIMS === '1';

const host = '127.0.0.1';
const issuer = `http://${host}:${port}`;

// accountId -> { name, email, affiliation: string[] }; filled by the login form.
const accounts = new Map();

function accountProfile(accountId) {
  const known = accounts.get(accountId);
  if (known) return known;
  const local = accountId.includes('@') ? accountId.split('@')[0] : accountId;
  return {
    name: local,
    email: accountId.includes('@') ? accountId : `${local}@example.org`,
    affiliation: [DEFAULT_AFFILIATION],
  };
}

// Fresh RS256 signing key for every run.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = {
  ...privateKey.export({ format: 'jwk' }),
  kid: `test-${randomBytes(6).toString('hex')}`,
  use: 'sig',
  alg: 'RS256',
};

const configuration = {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: redirectUris,
      response_types: ['code'],
      grant_types: ['authorization_code'],
      // Basic is the registered method; oidc-provider also accepts
      // client_secret_post for a client registered with either secret method.
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
    },
  ],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  responseTypes: ['code'],
  pkce: {
    required: () => true, // S256 is the only method oidc-provider 9 supports
  },
  scopes: ['openid', 'profile', 'email'],
  claims: {
    // acr under the openid scope so the id_token always carries the acr chosen at
    // login, not only when the RP sent acr_values / a claims request.
    openid: ['sub', 'acr'],
    profile: ['name', 'eduperson_scoped_affiliation'],
    email: ['email', 'email_verified'],
  },
  acrValues: [ACR_SFA, ACR_MFA],
  conformIdTokenClaims,
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    Grant: 3600,
    IdToken: 3600,
    Interaction: 600,
    Session: 3600,
  },
  jwks: { keys: [signingJwk] },
  cookies: {
    keys: [randomBytes(32).toString('hex')],
    // secure is only set by oidc-provider when the request itself is https,
    // so plain http on 127.0.0.1 works without touching these.
  },
  features: {
    devInteractions: { enabled: false },
    // Keep userinfo on (default) so RPs can fetch claims there too.
    userinfo: { enabled: true },
  },
  interactions: {
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  async findAccount(_ctx, accountId) {
    return {
      accountId,
      async claims(_use, _scope) {
        const profile = accountProfile(accountId);
        return {
          sub: accountId,
          name: profile.name,
          email: profile.email,
          email_verified: true,
          eduperson_scoped_affiliation: profile.affiliation,
        };
      },
    };
  },
  // Consent is auto-granted: find (or create) the client's grant and make sure
  // it covers whatever this authorization request asks for.
  async loadExistingGrant(ctx) {
    const { client, session, provider } = ctx.oidc;
    const accountId = ctx.oidc.account.accountId;
    const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
    let grant = grantId ? await provider.Grant.find(grantId) : undefined;
    if (!grant || grant.accountId !== accountId || grant.clientId !== client.clientId) {
      grant = new provider.Grant({ accountId, clientId: client.clientId });
    }
    const scopes = [...ctx.oidc.requestParamOIDCScopes];
    if (scopes.length) grant.addOIDCScope(scopes.join(' '));
    const claims = [...ctx.oidc.requestParamClaims];
    if (claims.length) grant.addOIDCClaims(claims);
    await grant.save();
    return grant;
  },
  renderError(ctx, out, _error) {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><html><head><title>oidc error</title></head><body>
<h1>${escapeHtml(out.error)}</h1><p id="error-description">${escapeHtml(out.error_description || '')}</p>
</body></html>`;
  },
};

const provider = new Provider(issuer, configuration);

function escapeHtml(value) {
  return String(value)
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

function loginPage(uid, params) {
  const requested = String(params.acr_values || '').split(' ');
  const mfaChecked = requested.includes(ACR_MFA) ? ' checked' : '';
  const loginHint = escapeHtml(params.login_hint || '');
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Test OP sign-in</title></head>
<body>
<h1>Test OpenID Provider</h1>
<p>client: <code>${escapeHtml(params.client_id)}</code>, scope: <code>${escapeHtml(params.scope || '')}</code></p>
<form id="oidc-login" method="post" action="/interaction/${escapeHtml(uid)}/login">
  <label>Username <input type="text" name="login" id="oidc-login-field" value="${loginHint}" required autofocus></label><br>
  <label>Name <input type="text" name="name" id="oidc-name"></label><br>
  <label>Email <input type="email" name="email" id="oidc-email"></label><br>
  <label>Affiliation <input type="text" name="affiliation" id="oidc-affiliation" placeholder="${DEFAULT_AFFILIATION}"></label><br>
  <label><input type="checkbox" name="mfa" id="oidc-mfa" value="1"${mfaChecked}> Multi-factor authentication</label><br>
  <button type="submit" id="oidc-submit">Sign in</button>
</form>
</body></html>`;
}

function send(res, status, contentType, body) {
  res.writeHead(status, {
    'content-type': contentType,
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function truthy(value) {
  return value !== null && ['1', 'on', 'true', 'yes'].includes(value.toLowerCase());
}

async function handleInteraction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    send(res, 400, 'text/plain; charset=utf-8', 'interaction uid mismatch\n');
    return;
  }
  const { prompt, params } = details;

  if (req.method === 'GET' && action === undefined) {
    if (prompt.name === 'login') {
      send(res, 200, 'text/html; charset=utf-8', loginPage(uid, params));
      return;
    }
    // Consent should never be needed (loadExistingGrant grants it), but if it
    // is, grant it here instead of showing a page.
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }

  if (req.method === 'POST' && action === 'login') {
    const form = await readForm(req);
    const login = (form.get('login') || '').trim();
    if (!login) {
      send(res, 400, 'text/plain; charset=utf-8', 'login is required\n');
      return;
    }
    const defaults = accountProfile(login);
    const affiliation = (form.get('affiliation') || '')
      .split(',')
      .map((a) => a.trim())
      .filter(Boolean);
    accounts.set(login, {
      name: (form.get('name') || '').trim() || defaults.name,
      email: (form.get('email') || '').trim() || defaults.email,
      affiliation: affiliation.length ? affiliation : defaults.affiliation,
    });
    const mfa = truthy(form.get('mfa'));
    await provider.interactionFinished(
      req,
      res,
      { login: { accountId: login, acr: mfa ? ACR_MFA : ACR_SFA } },
      { mergeWithLastSubmission: false },
    );
    return;
  }

  send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n');
}

const providerCallback = provider.callback();
const INTERACTION_PATH = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login))?\/?$/;

const server = http.createServer((req, res) => {
  const { pathname } = new URL(req.url, issuer);
  const match = INTERACTION_PATH.exec(pathname);
  if (!match) {
    providerCallback(req, res);
    return;
  }
  handleInteraction(req, res, match[1], match[2]).catch((err) => {
    process.stderr.write(`interaction error: ${err?.stack || err}\n`);
    if (!res.headersSent) {
      send(res, 400, 'text/plain; charset=utf-8', `${err?.name || 'Error'}: ${err?.message || err}\n`);
    } else {
      res.end();
    }
  });
});

provider.on('server_error', (_ctx, err) => {
  process.stderr.write(`server_error: ${err?.stack || err}\n`);
});

function shutdown() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

server.listen(port, host, () => {
  process.stdout.write(`READY ${issuer}\n`);
});
