"""The ``vlkit`` command line.

Commands::

    vlkit recipes list                         shipped recipes, one line each
    vlkit recipes show RECIPE [KEY=VALUE ...]  the resolved recipe (exit 2 on a recipe error)
        [--params]                             ... and parameter counts per part
    vlkit registry [KIND]                      what is registered, per swap point

A recipe is a file path or a shipped name (``albef/tiny``). Overrides are dotted keys with YAML
values: ``train.lr=3e-4``, ``objectives.mlm=null``, ``encoder.size=base``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from vlkit import registry
from vlkit.schema import RecipeError

EXIT_RECIPE_ERROR = 2


def _add_recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe file, or a shipped name such as albef/tiny")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides with YAML values, e.g. train.lr=3e-4 objectives.mlm=null")


def _cmd_recipes_list(args: argparse.Namespace) -> int:
    from vlkit.recipe import list_recipes, shipped_recipes_dir

    rows = list_recipes()
    width = max((len(name) for name, _ in rows), default=0)
    print(f"shipped recipes ({shipped_recipes_dir()}):")
    for name, description in rows:
        print(f"  {name:<{width}}  {description}")
    return 0


def _cmd_recipes_show(args: argparse.Namespace) -> int:
    from vlkit.recipe import resolve

    resolved = resolve(args.recipe, args.overrides)
    print(f"# resolved from: {' <- '.join(reversed(resolved.sources))}")
    print(resolved.recipe.to_yaml(), end="")
    if args.params:
        from vlkit.build import build_encoder, format_report, parameter_report

        encoder = build_encoder(resolved.recipe.encoder, device="meta")
        print()
        print(format_report(parameter_report(encoder.parts())))
    return 0


def _cmd_registry(args: argparse.Namespace) -> int:
    kinds = [args.kind] if args.kind else list(registry.KINDS)
    if args.kind and args.kind not in registry.KINDS:
        suggestion = registry.did_you_mean(args.kind, registry.KINDS)
        raise registry.RegistryError(f"unknown registry kind `{args.kind}`{suggestion}")
    entries = list(registry.entries())
    for kind in kinds:
        rows = [e for e in entries if e.kind == kind]
        print(f"{kind}:")
        if not rows:
            print("  (none)")
        width = max((len(e.name) for e in rows), default=0)
        for entry in rows:
            print(f"  {entry.name:<{width}}  {entry.description}  [{entry.module}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlkit", description="Vision-language pre-training toolkit.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    recipes = commands.add_parser("recipes", help="list, resolve and check recipes")
    recipe_commands = recipes.add_subparsers(dest="recipes_command", required=True, metavar="SUBCOMMAND")
    listing = recipe_commands.add_parser("list", help="shipped recipes with a one-line description")
    listing.set_defaults(func=_cmd_recipes_list)
    show = recipe_commands.add_parser("show", help="print the resolved recipe (exit 2 on an error)")
    _add_recipe_args(show)
    show.add_argument("--params", action="store_true", help="also report parameter counts per part")
    show.set_defaults(func=_cmd_recipes_show)

    reg = commands.add_parser("registry", help="list registered encoders, objectives, heads, ...")
    reg.add_argument("kind", nargs="?", help=f"one of {', '.join(registry.KINDS)}")
    reg.set_defaults(func=_cmd_registry)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vlkit`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except (RecipeError, registry.RegistryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_RECIPE_ERROR


if __name__ == "__main__":
    sys.exit(main())
