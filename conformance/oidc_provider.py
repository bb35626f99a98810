#!/usr/bin/env python3
"""A minimal OpenID Connect provider on loopback for conformance/ohif.sh.

It stands in for the hospital's identity provider (Keycloak, Entra ID, Cognito...):
OHIF logs in through it with the authorization-code flow and PKCE (oidc-client-ts),
and cloudpacs, started with only --oidc-issuer and --oidc-audience, discovers and
fetches its keys from it. Every login is granted at once to one configured person
(no login form); the tokens are real RS256 JWTs signed with a key made at start by
the openssl command line, so cloudpacs checks real signatures.

  oidc_provider.py --port PORT --key KEY_PEM --audience AUD --hospital H --roles reader

Endpoints: /.well-known/openid-configuration, /authorize, /token, /jwks, /userinfo,
/logout. Requests are logged as JSON lines on stdout (the suite checks that the
keys were fetched by cloudpacs).
"""
import argparse
import base64
import hashlib
import json
import secrets
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

# DER prefix of a SHA-256 DigestInfo (RFC 8017 §9.2, EMSA-PKCS1-v1_5).
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def int_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


class RsaKey:
    """An RSA private key read from PEM through `openssl rsa -text`."""

    def __init__(self, pem_path: str):
        text = subprocess.run(["openssl", "rsa", "-in", pem_path, "-noout", "-text"],
                              check=True, capture_output=True, text=True).stdout
        fields, name = {}, None
        for line in text.splitlines():
            if not line.startswith(" ") and ":" in line:
                name, _, rest = line.partition(":")
                fields[name] = rest.strip()
            elif name:
                fields[name] += line.strip()
        num = lambda f: int(fields[f].split(" ")[0].replace(":", ""), 16) \
            if f != "publicExponent" else int(fields[f].split(" ")[0])
        self.n, self.e, self.d = num("modulus"), num("publicExponent"), num("privateExponent")
        self.kid = hashlib.sha256(int_bytes(self.n)).hexdigest()[:16]

    def jwk(self) -> dict:
        return {"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
                "n": b64url(int_bytes(self.n)), "e": b64url(int_bytes(self.e))}

    def sign_jwt(self, claims: dict) -> str:
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        k = (self.n.bit_length() + 7) // 8
        t = SHA256_DIGEST_INFO + hashlib.sha256(signing_input.encode()).digest()
        em = b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t
        sig = pow(int.from_bytes(em, "big"), self.d, self.n).to_bytes(k, "big")
        return f"{signing_input}.{b64url(sig)}"


class Provider(BaseHTTPRequestHandler):
    key: RsaKey
    issuer: str
    audience: str
    claims: dict
    codes: dict = {}

    def log_message(self, fmt, *args):
        pass

    def _log(self, status):
        print(json.dumps({"method": self.command, "path": urlsplit(self.path).path,
                          "status": status}), flush=True)

    def _send(self, status, body=None, headers=()):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Cache-Control", "no-store")
        if body is not None:
            self.send_header("Content-Type", "application/json")
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self._log(status)

    def do_OPTIONS(self):
        self._send(204, headers=[("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                                 ("Access-Control-Allow-Headers", "authorization, content-type, accept")])

    def do_GET(self):
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/.well-known/openid-configuration":
            base = self.issuer
            self._send(200, {
                "issuer": base,
                "authorization_endpoint": f"{base}/authorize",
                "token_endpoint": f"{base}/token",
                "userinfo_endpoint": f"{base}/userinfo",
                "end_session_endpoint": f"{base}/logout",
                "jwks_uri": f"{base}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "grant_types_supported": ["authorization_code"],
                "scopes_supported": ["openid", "profile"],
            })
        elif url.path == "/jwks":
            self._send(200, {"keys": [self.key.jwk()]})
        elif url.path == "/authorize":
            if q.get("response_type") != "code" or not q.get("redirect_uri") \
                    or q.get("code_challenge_method") != "S256":
                self._send(400, {"error": "invalid_request"})
                return
            code = secrets.token_urlsafe(24)
            self.codes[code] = q
            back = {"code": code}
            if "state" in q:
                back["state"] = q["state"]
            self._send(302, headers=[("Location", f"{q['redirect_uri']}?{urlencode(back)}")])
        elif url.path == "/userinfo":
            self._send(200, {"sub": self.claims["sub"], "name": self.claims["name"]})
        elif url.path == "/logout":
            target = q.get("post_logout_redirect_uri")
            self._send(302 if target else 200, headers=[("Location", target)] if target else [])
        else:
            self._send(404, {"error": "not_found"})

    def do_POST(self):
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        if url.path != "/token":
            self._send(404, {"error": "not_found"})
            return
        grant = self.codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        if form.get("grant_type") != "authorization_code" or grant is None \
                or form.get("redirect_uri") != grant["redirect_uri"] \
                or b64url(hashlib.sha256(verifier.encode()).digest()) != grant["code_challenge"]:
            self._send(400, {"error": "invalid_grant"})
            return
        now = int(time.time())
        common = {"iss": self.issuer, "sub": self.claims["sub"], "iat": now, "nbf": now - 5,
                  "exp": now + 3600}
        access = dict(common, aud=self.audience, hospital=self.claims["hospital"],
                      roles=self.claims["roles"])
        id_token = dict(common, aud=grant["client_id"], name=self.claims["name"])
        if "nonce" in grant:
            id_token["nonce"] = grant["nonce"]
        self._send(200, {"access_token": self.key.sign_jwt(access),
                         "id_token": self.key.sign_jwt(id_token), "token_type": "Bearer",
                         "expires_in": 3600, "scope": grant.get("scope", "openid")})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--key", required=True, help="RSA private key, PEM")
    ap.add_argument("--audience", required=True)
    ap.add_argument("--hospital", required=True)
    ap.add_argument("--roles", default="reader")
    a = ap.parse_args()
    Provider.key = RsaKey(a.key)
    Provider.issuer = f"http://127.0.0.1:{a.port}"
    Provider.audience = a.audience
    Provider.claims = {"sub": "radiologist-1", "name": "Test Radiologist",
                       "hospital": a.hospital, "roles": a.roles.split(",")}
    print(json.dumps({"listening": Provider.issuer}), flush=True)
    ThreadingHTTPServer(("127.0.0.1", a.port), Provider).serve_forever()


if __name__ == "__main__":
    sys.exit(main())
