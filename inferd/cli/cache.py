"""`inferd cache`: what the compiled-model cache holds, and pruning it.

Every package version, backend version and load option compiles into an entry of its own, and nothing else ever
removes the old ones: on a server that is redeployed often, or a Ray node that has served many package versions,
the cache only grows. These commands show it and cut it back, least recently used first.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from inferd.cli.options import parse_duration, parse_size
from inferd.cli.render import human_bytes, out
from inferd.errors import InferdError
from inferd.runtime.cache import CacheEntry, cache_root, entries, prune

cache_app = typer.Typer(help="What the compiled-model cache holds (list), and pruning it (prune).",
                        no_args_is_help=True)
CacheDirOpt = Annotated[Path | None, typer.Option(
    "--cache-dir", help="the cache to look at (default: $INFERD_CACHE_DIR, else ~/.cache/inferd)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="one JSON document instead of the table")]


@cache_app.command("list")
def list_(cache_dir: CacheDirOpt = None, json_: JsonOpt = False) -> None:
    """Every entry: what it holds, its size and when it was last used, least recently used first."""
    root = cache_root(cache_dir)
    listed = entries(root)
    if json_:
        print(json.dumps({"cache_dir": str(root), "total_bytes": sum(e.size for e in listed),
                          "entries": [_as_dict(e) for e in listed]}, indent=2))
        return
    _show(listed, f"{root}: {len(listed)} entries, {human_bytes(sum(e.size for e in listed))}")


@cache_app.command("prune")
def prune_(
    unused_for: Annotated[str | None, typer.Option(
        help="remove what no load has used for this long, e.g. 12h, 30d, 2w")] = None,
    max_size: Annotated[str | None, typer.Option(
        help="then remove the least recently used until the rest fit, e.g. 2G or 500M")] = None,
    all_: Annotated[bool, typer.Option("--all", help="remove every entry")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only say what would be removed")] = False,
    cache_dir: CacheDirOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Remove old entries; a running server keeps what it loaded, and its next load compiles again."""
    if not (unused_for or max_size or all_):
        raise InferdError("say what to remove: --unused-for 30d, --max-size 2G, or --all (--dry-run to look first)")
    root = cache_root(cache_dir)
    removed = prune(root, unused_for_s=parse_duration(unused_for) if unused_for else None,
                    max_bytes=parse_size(max_size) if max_size else None, everything=all_, dry_run=dry_run)
    freed = sum(e.size for e in removed)
    if json_:
        print(json.dumps({"cache_dir": str(root), "dry_run": dry_run, "removed_bytes": freed,
                          "removed": [_as_dict(e) for e in removed]}, indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    _show(removed, f"{root}: {verb} {len(removed)} entries, {human_bytes(freed)}")


def _show(listed: list[CacheEntry], title: str) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("entry", "holds", "size", "last used"):
        table.add_column(column, justify="right" if column in ("size", "last used") else "left")
    now = time.time()
    for entry in listed:  # the key's first characters are enough to tell entries apart; --json has whole paths
        table.add_row(f"{entry.kind}/{entry.path.name[:8]}", entry.holds or "(written by an earlier inferd)",
                      human_bytes(entry.size), f"{_age(now - entry.last_used)} ago")
    out.print(table)


def _as_dict(entry: CacheEntry) -> dict[str, object]:
    return {"path": str(entry.path), "kind": entry.kind, "holds": entry.holds, "bytes": entry.size,
            "last_used": entry.last_used}


def _age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"
