"""`streamrec`: the one command-line entry point.

Every module in ``worker/commands/`` that defines ``register(app)`` adds its commands here.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

import worker.commands

app = typer.Typer(
    name="streamrec",
    help=(
        "streamrec: a real-time recommender worker.\n\n"
        "Events from Kafka -> per-user history in Redis -> HSTU encoder -> retrieval/generator -> "
        "recommendations on Kafka. Typical session: `streamrec train --data synthetic --out models/default`, "
        "`streamrec worker`, `streamrec produce --rate 100`, `streamrec tail`.\n\n"
        "Settings come from env vars STREAMREC_* (or a TOML file given by --config / STREAMREC_CONFIG); "
        "the flags of each command override them."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _mod in sorted(pkgutil.iter_modules(worker.commands.__path__), key=lambda m: m.name):
    _module = importlib.import_module(f"worker.commands.{_mod.name}")
    if hasattr(_module, "register"):
        _module.register(app)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
