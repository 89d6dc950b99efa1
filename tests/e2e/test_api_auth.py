"""Token verification without a server (cache, HS256 in development, refusal to start unsafely), and the
`razao auth token` command against a running server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from commands.api.auth import TokenRejected, TokenVerifier, ensure_dev_keys, mint_token, verifier_for
from commands.api.settings import ApiSettings, UnsafeConfiguration
from tests.conftest import RunRazao
from tests.e2e.conftest import ApiServer


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_cached_tokens_still_expire() -> None:
    key, clock = Ed25519PrivateKey.generate(), Clock(time.time())
    verifier = TokenVerifier(key.public_key(), clock=clock, leeway_s=5)
    token = mint_token(key, "ops-1", "operator", ttl_s=60, now=clock.now)
    assert verifier.verify(token).role == "operator"
    clock.now += 30
    assert verifier.verify(token).sub == "ops-1" and verifier.hits == 1
    clock.now += 36  # past exp + leeway
    with pytest.raises(TokenRejected, match="expired"):
        verifier.verify(token)


def test_token_cache_is_bounded() -> None:
    key = Ed25519PrivateKey.generate()
    verifier = TokenVerifier(key.public_key(), cache_entries_max=3)
    tokens = [mint_token(key, f"svc-{n}", "service") for n in range(5)]
    for token in tokens:
        verifier.verify(token)
    assert verifier.cached_tokens == 3 and verifier.misses == 5


def test_hs256_only_with_the_configured_secret_and_never_keyed_by_the_public_key() -> None:
    key = Ed25519PrivateKey.generate()
    secret = b"development-secret-of-at-least-32-bytes!"
    verifier = TokenVerifier(key.public_key(), hs256_secret=secret)
    assert verifier.verify(mint_token(secret, "tool", "service")).sub == "tool"
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    claims = jwt.decode(mint_token(secret, "tool", "service"), options={"verify_signature": False})
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    signature = base64.urlsafe_b64encode(hmac.new(public_pem, header + b"." + payload, hashlib.sha256).digest())
    confused = (header + b"." + payload + b"." + signature.rstrip(b"=")).decode()
    with pytest.raises(TokenRejected, match="signature"):
        verifier.verify(confused)
    without_secret = TokenVerifier(key.public_key())
    with pytest.raises(TokenRejected, match="not accepted"):
        without_secret.verify(mint_token(secret, "tool", "service"))


def test_development_credentials_are_refused_outside_development(tmp_path: Path) -> None:
    ensure_dev_keys(tmp_path / "jwt")
    with pytest.raises(UnsafeConfiguration, match="RAZAO_JWT_PUBLIC_KEY_FILE is not set"):
        verifier_for(ApiSettings(env="production", state_dir=tmp_path))
    with pytest.raises(UnsafeConfiguration, match="development keys"):
        verifier_for(ApiSettings(env="production", state_dir=tmp_path,
                                 jwt_public_key_file=tmp_path / "jwt" / "ed25519-public.pem"))
    own = tmp_path / "prod-public.pem"
    own.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(UnsafeConfiguration, match="HS256"):
        verifier_for(ApiSettings(env="production", state_dir=tmp_path, jwt_public_key_file=own,
                                 jwt_hs256_secret="x" * 40))  # type: ignore[arg-type]
    production = verifier_for(ApiSettings(env="production", state_dir=tmp_path, jwt_public_key_file=own))
    assert production.hs256_secret is None


def test_the_server_refuses_to_start_in_production_with_dev_keys(tmp_path: Path) -> None:
    env = {**os.environ, "RAZAO_ENV": "production", "RAZAO_STATE_DIR": str(tmp_path)}
    env.pop("RAZAO_JWT_PUBLIC_KEY_FILE", None)
    result = subprocess.run([sys.executable, "-m", "commands.api", "--port", "1"], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2 and "refusing to start" in result.stderr


def test_razao_auth_token_mints_a_token_the_server_accepts(api: ApiServer, razao: RunRazao) -> None:
    env = {**os.environ, "RAZAO_STATE_DIR": str(api.state_dir), "RAZAO_ENV": "development"}
    token = razao("auth", "token", "--role", "auditor", "--sub", "audit-1", "--ttl-s", "120", env=env).stdout.strip()
    response = httpx.get(f"{api.url}/v1/parties/{uuid.uuid4()}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 404  # authenticated, and the party does not exist
    refused = razao("auth", "token", "--role", "investor", "--sub", "not-a-uuid", env=env, check=False)
    assert refused.returncode == 2 and "party id" in refused.stderr
