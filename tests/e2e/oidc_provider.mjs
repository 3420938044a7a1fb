// A real OpenID Connect provider for the tests: the certified `oidc-provider` package
// with its development login and consent pages (any password signs in as the login
// name). Usage: node oidc_provider.mjs PORT REDIRECT_URI
import Provider from "oidc-provider";

const [port, redirect] = process.argv.slice(2);
const people = {
  alice: { email: "alice@uni.example", email_verified: true, name: "Alice Admin", groups: ["parlance-admins", "staff"] },
  bob: { email: "bob@uni.example", email_verified: true, name: "Bob Member", groups: ["staff"] },
  mallory: { email: "mallory@elsewhere.example", email_verified: true, name: "Mallory", groups: [] },
};

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: "parlance",
    client_secret: "parlance-test-secret",
    redirect_uris: [redirect],
    response_types: ["code"],
    grant_types: ["authorization_code"],
    token_endpoint_auth_method: "client_secret_post",
  }],
  pkce: { methods: ["S256"], required: () => true },
  scopes: ["openid", "email", "profile", "groups"],
  claims: { openid: ["sub"], email: ["email", "email_verified"], profile: ["name"], groups: ["groups"] },
  // The ID token carries the requested claims (as most providers' do).
  conformIdTokenClaims: false,
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, ...(people[id] || { email: `${id}@uni.example`, email_verified: true, name: id, groups: [] }) }),
  }),
  cookies: { keys: ["oidc-test-cookie-key"] },
  features: { devInteractions: { enabled: true } },
});

provider.listen(Number(port), "127.0.0.1", () => console.log(`oidc provider on ${port}`));
