"""`razao auth token --role R --sub S [--ttl-s N]`: print a development token for the command API.

Tokens are signed with the development Ed25519 key (`<state_dir>/jwt/`, created on first use) or with
``RAZAO_JWT_PRIVATE_KEY_FILE``; ``--hs256`` signs with ``RAZAO_JWT_HS256_SECRET`` instead. Development only:
real tokens come from the platform's identity provider.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from commands.api.auth import ROLES, TokenRejected, check_claims, mint_token, signing_key_for
from commands.api.bootstrap import load_api_settings

TTL_S_MAX = 30 * 24 * 3600


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("auth", help="development tokens for the command API")
    sub = parser.add_subparsers(dest="auth_command", required=True)
    token = sub.add_parser("token", help="print a signed development token")
    token.add_argument("--role", required=True, choices=sorted(ROLES))
    token.add_argument("--sub", required=True, help="subject: the party id for investors and borrowers")
    token.add_argument("--ttl-s", type=int, default=3600, help="lifetime in seconds (default 3600)")
    token.add_argument("--hs256", action="store_true", help="sign with RAZAO_JWT_HS256_SECRET (development)")
    token.set_defaults(func=run_token)


def run_token(args: argparse.Namespace) -> int:
    settings = load_api_settings()
    if not settings.is_development:
        print("razao auth: development tokens are minted only with RAZAO_ENV=development", file=sys.stderr)
        return 2
    if not 0 < args.ttl_s <= TTL_S_MAX:
        print(f"razao auth: --ttl-s must be between 1 and {TTL_S_MAX}", file=sys.stderr)
        return 2
    try:  # the same checks the API makes, so a token printed here is one the API accepts
        check_claims({"sub": args.sub, "role": args.role, "iat": 0})
    except TokenRejected as exc:
        print(f"razao auth: {exc}", file=sys.stderr)
        return 2
    if args.hs256:
        secret = settings.hs256_secret()
        if secret is None:
            print("razao auth: --hs256 needs RAZAO_JWT_HS256_SECRET", file=sys.stderr)
            return 2
        print(mint_token(secret, args.sub, args.role, ttl_s=args.ttl_s))
        return 0
    print(mint_token(signing_key_for(settings), args.sub, args.role, ttl_s=args.ttl_s))
    return 0
