"""``imagereward models``: the registered scorers, what they are and where their weights come from."""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List

from .common import EXIT_CODES_HELP, HelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the registered scorers",
        description="The scorers that --model/--models/--metrics and imagereward.load() take, "
        "with their weight files.",
        epilog=EXIT_CODES_HELP,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of records")
    parser.set_defaults(func=run)


def _records() -> List[Dict[str, Any]]:
    from ..registry import available_models, get_entry

    records = []
    for name in available_models():
        entry = get_entry(name)
        records.append(
            {
                "name": entry.name,
                "aliases": list(entry.aliases),
                "description": entry.description,
                "files": {
                    role: spec.url or f"hf://{spec.repo_id}/{spec.filename}"
                    for role, spec in entry.files.items()
                },
                "published_accuracy": entry.published_accuracy,
            }
        )
    return records


def run(args: argparse.Namespace) -> int:
    records = _records()
    if args.json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
        return 0
    for record in records:
        aliases = f" (also: {', '.join(record['aliases'])})" if record["aliases"] else ""
        print(f"{record['name']}{aliases}\n  {record['description']}")
        if record["published_accuracy"] is not None:
            print(f"  published preference accuracy on ImageReward's test set: {record['published_accuracy']}%")
        for role, source in record["files"].items():
            print(f"  {role}: {source}")
    return 0
