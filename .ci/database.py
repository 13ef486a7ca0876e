"""CI helper: `create SERVER_URL` makes a fresh database, prints its URL; `drop URL` drops it."""

import sys
import time

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from service.eventstore.database import with_database


def main(action: str, url: str) -> None:
    if action == "create":
        name = f"rollcall_ci_{int(time.time())}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        print(with_database(url, name))
    else:
        name = str(conninfo_to_dict(url)["dbname"])
        with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
