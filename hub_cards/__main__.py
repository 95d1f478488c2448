"""`python -m gatedgpt2.hub_cards card|push|update-code`: write a checkpoint's model card; upload it to the Hub; bring
its code up to date without touching its weights."""

from __future__ import annotations

import argparse
from pathlib import Path

from .card import write_card
from .push import push, push_with_revisions
from .update_code import update_code


def card_command(args: argparse.Namespace) -> None:
    path = write_card(args.model, args.results, args.figures, args.repo, args.license, args.dataset)
    print(f"Wrote {path}")


def push_command(args: argparse.Namespace) -> None:
    if args.with_revisions:
        if args.revision or args.stage:
            raise ValueError("--with-revisions pushes main and every revisions/chck_* branch; it takes no "
                             "--revision or --stage.")
        pushed = push_with_revisions(args.model, args.repo, args.private, dry_run=args.dry_run)
    else:
        pushed = {args.revision or "main": push(args.model, args.repo, args.revision, args.private, args.dry_run,
                                                args.stage)}
    for branch, files in pushed.items():
        print(f"{'Would upload' if args.dry_run else 'Uploaded'} to {args.repo}@{branch}:")
        for name in files:
            print(f"  {name}")


def update_code_command(args: argparse.Namespace) -> None:
    report = update_code(args.model, args.revision, args.dry_run)
    where = f"{args.model}" + (f"@{args.revision}" if args.revision else "")
    if not report:
        print(f"{where}: the code is already current; nothing to change.")
        return
    print(f"{'Would change' if args.dry_run else 'Changed'} in {where} (weights untouched):")
    for name, change in sorted(report.items()):
        print(f"  {change:8} {name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gatedgpt2.hub_cards", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    card = commands.add_parser("card", help="write README.md (the model card) into a checkpoint folder")
    card.add_argument("--model", required=True, type=Path, help="the checkpoint folder")
    card.add_argument("--results", type=Path, action="append", default=[],
                      help="results.json of `python -m gatedgpt2.eval zero-shot` (repeatable: with and without vision)")
    card.add_argument("--figures", type=Path, action="append", default=[], help="PNG files or folders of them")
    card.add_argument("--repo", help="the Hub repository id the card's snippets load from")
    card.add_argument("--license", default="apache-2.0")
    card.add_argument("--dataset", action="append", default=[], help="Hub id of a training dataset (repeatable)")
    card.set_defaults(run=card_command)

    up = commands.add_parser("push", help="upload a checkpoint folder (safetensors, code, tokenizer, card, figures)")
    up.add_argument("--model", required=True, type=Path, help="the checkpoint folder")
    up.add_argument("--repo", required=True, help="ORG/NAME")
    up.add_argument("--revision", help="a branch, e.g. chck_10M (created when missing)")
    up.add_argument("--with-revisions", action="store_true",
                    help="also push each revisions/chck_* folder to the branch of its name")
    up.add_argument("--private", action="store_true")
    up.add_argument("--dry-run", action="store_true", help="list the files, upload nothing")
    up.add_argument("--stage", type=Path, help="copy exactly the files that would be uploaded into this folder")
    up.set_defaults(run=push_command)

    update = commands.add_parser("update-code", help="replace a checkpoint's code files (and auto_map, tokenizer "
                                 "class) by the current portable code, weights untouched")
    update.add_argument("--model", required=True, help="a checkpoint folder, or a Hub repository id (ORG/NAME)")
    update.add_argument("--revision", help="a Hub branch, e.g. chck_10M (Hub repositories only)")
    update.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    update.set_defaults(run=update_code_command)

    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
