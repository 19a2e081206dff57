"""Issue and revoke API keys from a shell on the server (the same store as the admin API).

    python -m app.keys create --tenant acme [--name ci] [--admin]
    python -m app.keys list
    python -m app.keys revoke KEY_ID
"""

from __future__ import annotations

import argparse
import json
import sys

from sqlalchemy import select

from app.core.db import get_sessionmaker
from app.core.migrate import upgrade
from app.db.models import ApiKey
from app.services.keys import create_key, revoke_key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deepopt keys", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="issue a key and print it (once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default="")
    create.add_argument("--admin", action="store_true", help="the key may call the admin API")
    commands.add_parser("list", help="list keys (prefixes only)")
    revoke = commands.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)
    upgrade()
    with get_sessionmaker()() as session:
        if args.command == "create":
            row, key = create_key(session, tenant=args.tenant, name=args.name, admin=args.admin)
            print(json.dumps({"id": row.id, "tenant": row.tenant, "key": key}))
            print("store the key now: only its hash is kept", file=sys.stderr)
        elif args.command == "list":
            for row in session.scalars(select(ApiKey).order_by(ApiKey.created_at)):
                print(json.dumps({"id": row.id, "tenant": row.tenant, "name": row.name, "prefix": row.prefix,
                                  "admin": row.is_admin, "revoked": row.revoked_at is not None}))
        elif revoke_key(session, args.key_id) is None:
            print(f"no key {args.key_id}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
