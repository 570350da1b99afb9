// A real OpenID provider for the gateway's JWT tests: oidc-provider (a certified
// implementation) issuing client-credentials access tokens as JWTs for a resource indicator
// (RFC 8707: the `resource` parameter becomes the token's `aud`).
//
//   node provider.mjs <port> <keys.json>
//
// <keys.json>: [{"kid": "...", "alg": "RS256"|"EdDSA"|"ES256", "pem": "<PKCS#8 private key>"}];
// the first key signs. The test generates the keys, so it can also mint the tokens a provider
// never would (expired, wrong audience, alg none, ...). Listens on 127.0.0.1 only and prints
// "ready <issuer>" once it accepts connections.
import Provider from 'oidc-provider';
import { createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';

const [port, keysFile] = process.argv.slice(2);
if (!port || !keysFile) {
  console.error('usage: node provider.mjs <port> <keys.json>');
  process.exit(2);
}
const keys = JSON.parse(readFileSync(keysFile, 'utf8'));
const jwks = {
  keys: keys.map(({ kid, alg, pem }) => ({
    ...createPrivateKey(pem).export({ format: 'jwk' }),
    kid,
    alg,
    use: 'sig',
  })),
};
const signingAlg = keys[0].alg;
const issuer = `http://127.0.0.1:${port}`;

// Clients: client id = agent id (the token's `sub` and `client_id`).
const client = (id, scope) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  token_endpoint_auth_method: 'client_secret_post',
  scope,
});

const provider = new Provider(issuer, {
  clients: [client('agent-1', 'files:read files:write'), client('agent-2', 'files:read')],
  jwks,
  enabledJWA: { authorizationSigningAlgValues: ['RS256', 'ES256', 'EdDSA'] },
  scopes: ['files:read', 'files:write'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource) => ({
        scope: 'files:read files:write',
        audience: resource,
        accessTokenTTL: 600,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: signingAlg } },
      }),
    },
  },
});

const server = provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
