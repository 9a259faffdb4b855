"""Rich output for people; every function takes the typed result the library returned."""

from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # imported for annotations only: `lookup` must not pay for httpx and SQLModel
    from crawler.civitai import CrawlSummary
    from crawler.hf import HfCrawlSummary
    from crawler.registry.stats import RegistryStatus


def _sample(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _crawl_report(console: Console, s, rows: list[tuple[str, object]], notes: list[str]) -> None:
    color = {"ok": "green", "interrupted": "yellow"}.get(s.status, "red")
    console.print(f"[{color}]crawl {s.status}[/] (run {s.run_id}, {s.mode}{', resumed' if s.resumed else ''})")
    table = Table.grid(padding=(0, 2))
    for label, value in rows:
        table.add_row(label, str(value))
    console.print(table)
    for note in notes:
        console.print(note)
    if s.error:
        console.print(f"[red]error:[/] {s.error}")


def crawl_summary(console: Console, s: "CrawlSummary") -> None:
    rows = [("pages", s.pages), ("models", s.models), ("versions", s.versions), ("models changed", s.written),
            ("new inpainting releases", s.new_inpainting), ("new sibling links", s.new_links),
            ("retried requests", s.retries), ("errors", s.errors)]  # fmt: skip
    notes = ["unknown base models (stored as-is): " + ", ".join(sorted(s.unknown_base_models))] \
        if s.unknown_base_models else []  # fmt: skip
    _crawl_report(console, s, rows, notes)


def hf_crawl_summary(console: Console, s: "HfCrawlSummary") -> None:
    rows = [("pages", s.pages), ("repos listed", s.listed), ("new or changed repos inspected", s.inspected),
            ("skipped (LoRA, ControlNet, ...)", s.skipped), ("new inpainting releases", s.new_inpainting),
            ("gated or unavailable (recorded)", s.unavailable), ("new sibling links", s.new_links),
            ("new same-file links to Civitai", s.same_files),
            ("official mirrors alive and matching", s.officials_alive), ("requests", s.requests),
            ("retried requests", s.retries), ("errors", s.errors)]  # fmt: skip
    notes = ["[yellow]official mirrors gone[/] (recommendations moved to a live mirror): "
             + ", ".join(s.officials_dead)] if s.officials_dead else []  # fmt: skip
    _crawl_report(console, s, rows, notes)


def registry_status(console: Console, st: "RegistryStatus") -> None:
    console.print(f"registry [bold]{st.db}[/]")
    console.print(
        f"{st.models:,} models, {st.versions:,} versions, {st.files:,} files; "
        f"{st.inpainting_versions:,} inpainting versions, {st.links:,} inpainting links, "
        f"{st.same_files:,} Civitai/Hugging Face same-file links"
    )
    if st.per_source:
        console.print("models per source: " + ", ".join(f"{k} {v:,}" for k, v in sorted(st.per_source.items())))
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
    if st.officials:
        table = Table(title="Official checkpoints (checked by the last Hugging Face crawl)")
        for col in ("family", "role", "repo", "state", "checked (UTC)", "detail"):
            table.add_column(col)
        for o in st.officials:
            state = "[green]alive[/]" if o.alive and o.matches else "[yellow]changed[/]" if o.alive else "[red]gone[/]"
            table.add_row(o.family, o.role, o.repo, state, f"{o.checked_at:%Y-%m-%d %H:%M}", o.detail[:60])
        console.print(table)
    else:
        console.print("official checkpoints: not checked yet (run [bold]inpaint-advisor crawl hf[/])")
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


_KIND_TITLE = {
    "already-inpainting": "Already an inpainting model",
    "own-release": "Use its own inpainting release",
    "sibling-release": "Use the creator's inpainting model",
    "official": "Use the official inpainting model",
    "build": "Build an inpainting version",
    "none": "No inpainting route",
}


def _rec_lines(rec, full: bool) -> list:
    lines = [Text(rec.reason)]
    t = rec.target
    if t is not None and full:
        facts = [("file", t.file), ("repo", t.repo), ("page", t.url), ("download", t.download_url),
                 ("sha256", t.sha256), ("size", f"{t.size:,} B" if t.size else None)]  # fmt: skip
        for label, value in facts:
            if value:
                lines.append(Text.assemble((f"{label:>9} ", "dim"), str(value)))
    if rec.command:
        lines.append(Text.assemble(("$ ", "dim"), (rec.command, "bold cyan")))
    for ev in rec.evidence if full else []:
        lines.append(Text(f"  · {ev}", style="dim"))
    return lines


def lookup_result(console: Console, r) -> None:
    for note in r.notes:
        console.print(f"[dim]{note}[/]")
    if r.match is None and r.candidates:
        table = Table(title=f"Several models match “{r.query}”")
        for col in ("score", "id", "name", "creator", "family"):
            table.add_column(col)
        for c in r.candidates:
            table.add_row(f"{c.score:.0f}", c.model_id, c.name, c.creator or "", c.family or "?")
        console.print(table)
        console.print("Look one up by id, e.g. [bold]inpaint-advisor lookup " + r.candidates[0].model_id + "[/]")
        return
    if r.match is None or r.recommendation is None:
        console.print(f"[red]nothing matched[/] “{r.query}”")
        return
    m = r.match
    who = f" by {m.creator}" if m.creator else ""
    version = f" — {m.version_name}" if m.version_name else ""
    head = Text.assemble((f"{m.name}{version}", "bold"), who, (f"  [{m.family or 'unknown family'}", "dim"),
                         (f", base {m.base_model}]" if m.base_model else "]", "dim"))  # fmt: skip
    rec = r.recommendation
    body = [head, Text(""), *_rec_lines(rec, True)]
    color = {"none": "red", "build": "yellow"}.get(rec.kind, "green")
    console.print(Panel(Group(*body), title=_KIND_TITLE[rec.kind], title_align="left", border_style=color))
    for alt in r.alternatives:  # compact: the reason and the command; --json has every detail
        console.print(Panel(Group(*_rec_lines(alt, False)), title="Alternative: " + _KIND_TITLE[alt.kind],
                            title_align="left", border_style="dim"))  # fmt: skip
    for w in r.warnings:
        console.print(f"[yellow]warning:[/] {w}")


def probe_result(console: Console, p) -> None:
    table = Table.grid(padding=(0, 2))
    rows = [("file", p.path), ("format", p.format), ("family", p.family or "unknown"), ("variant", p.variant),
            ("in channels", p.in_channels), ("prediction", p.prediction + (f" ({', '.join(p.markers)})" if p.markers
                                                                          else "")),
            ("dtype", p.dtype), ("parameters", f"{p.params / 1e9:.3f} B" if p.params else None),
            ("components", ", ".join(p.components)), ("architecture", p.architecture),
            ("sha256", p.sha256), ("AutoV2", p.autov2), ("AutoV3", p.autov3), ("AutoV1", p.autov1)]  # fmt: skip
    for label, value in rows:
        if value not in (None, ""):
            table.add_row(Text(label, style="dim"), str(value))
    console.print(table)
