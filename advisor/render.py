"""Rich output for people; every function takes the typed result the library returned."""

from rich.console import Console
from rich.table import Table

from crawler.civitai import CrawlSummary
from crawler.stats import RegistryStatus


def _sample(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def crawl_summary(console: Console, s: CrawlSummary) -> None:
    color = {"ok": "green", "interrupted": "yellow"}.get(s.status, "red")
    head = f"[{color}]crawl {s.status}[/] (run {s.run_id}, {s.mode}{', resumed' if s.resumed else ''})"
    console.print(head)
    table = Table.grid(padding=(0, 2))
    for label, value in [
        ("pages", s.pages),
        ("models", s.models),
        ("versions", s.versions),
        ("models changed", s.written),
        ("new inpainting releases", s.new_inpainting),
        ("new sibling links", s.new_links),
        ("retried requests", s.retries),
        ("errors", s.errors),
    ]:
        table.add_row(label, str(value))
    console.print(table)
    if s.unknown_base_models:
        console.print("unknown base models (stored as-is): " + ", ".join(sorted(s.unknown_base_models)))
    if s.error:
        console.print(f"[red]error:[/] {s.error}")


def registry_status(console: Console, st: RegistryStatus) -> None:
    console.print(f"registry [bold]{st.db}[/]")
    console.print(
        f"{st.models:,} models, {st.versions:,} versions, {st.files:,} files; "
        f"{st.inpainting_versions:,} inpainting versions, {st.links:,} inpainting links"
    )
    if st.families:
        table = Table(title="Fine-tunes per family (dedicated inpainting models not counted)")
        for col in ("family", "name", "models", "with own inpainting", "coverage", "official inpainting"):
            table.add_column(col, justify="right" if col in ("models", "with own inpainting", "coverage") else "left")
        for f in st.families:
            table.add_row(
                f.family,
                f.name,
                f"{f.models:,}",
                f"{f.with_inpainting:,}",
                f"{f.coverage:.1%}",
                "yes" if f.official_inpaint else "—",
            )
        console.print(table)
    if st.unknown_base_models:
        console.print(
            "[yellow]unknown base models[/] (add them to data/families.json): "
            + ", ".join(f"{bm} ({n})" for bm, n in st.unknown_base_models)
        )
    if st.runs:
        table = Table(title="Recent crawls")
        for col in ("run", "source", "mode", "status", "started (UTC)", "pages", "models", "errors", "note"):
            table.add_column(col)
        for r in st.runs:
            note = r.last_error or ("resumable" if r.cursor and r.status != "ok" else "")
            table.add_row(
                str(r.id),
                r.source,
                r.mode,
                r.status,
                f"{r.started_at:%Y-%m-%d %H:%M}",
                str(r.pages),
                f"{r.items:,}",
                str(r.errors),
                note[:60],
            )
        console.print(table)


def merge_result(console: Console, r) -> None:
    console.print(
        f"[green]wrote[/] {r.out} ({r.bytes_written / 1e9:.2f} GB, {r.dtype}) in {r.seconds:.1f}s on {r.device}"
    )
    console.print(
        f"{r.family} {r.variant}: {r.added} tensors merged, {len(r.channel_merged)} by channel "
        f"({_sample(r.channel_merged)}), {r.copied} copied from A; M = {r.multiplier}"
    )
    if r.markers:
        console.print(f"carried B's prediction markers: {', '.join(r.markers)}")
    if r.only_in_b:
        console.print(
            f"[yellow]{len(r.only_in_b)} keys only in B were dropped[/] (output keys are A's): {_sample(r.only_in_b)}"
        )
    if r.mismatched:
        console.print(
            f"[yellow]{len(r.mismatched)} keys differ in shape and were copied from A:[/] {_sample(r.mismatched)}"
        )
    if r.missing_in_bc:
        console.print(
            f"[yellow]{len(r.missing_in_bc)} keys missing in B or C were copied from A:[/] {_sample(r.missing_in_bc)}"
        )
    if r.nonfinite:
        console.print(f"[red]NaN/Inf in {len(r.nonfinite)} output tensors:[/] {_sample(r.nonfinite)}")
    for w in r.warnings:
        console.print(f"[yellow]warning:[/] {w}")
