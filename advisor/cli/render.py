"""Rich output for people; every function takes the typed result the library returned.

Names, file names, base models, errors and paths are strangers' text: they reach rich only as ``Text`` (never
parsed as markup) after ``safety.terminal_text`` (no escape sequences or control characters), through ``t()``.
Markup is used only for our own fixed words.
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, Group, JustifyMethod
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from advisor.advice import Command, shell_text
from advisor.safety import shorten, terminal_text
from data.settings import scrub

if TYPE_CHECKING:  # imported for annotations only: `lookup` must not pay for httpx and SQLModel
    from crawler.civitai import CrawlSummary
    from crawler.hf import HfCrawlSummary
    from crawler.registry import RegistryStatus


def _safe(value: object) -> str:
    """Terminal-safe, and without a configured secret (a mirror's password in a note, say): the text output
    keeps what JSON output keeps (data.settings.scrub)."""
    return scrub(terminal_text(value))


def t(value: object, style: str = "") -> Text:
    """A stranger's text as literal, terminal-safe rich Text."""
    return Text(_safe(value), style=style)


def line(*parts) -> Text:
    """``Text.assemble`` of (text, style) pairs and plain values, every value made terminal-safe."""
    out = Text()
    for part in parts:
        if isinstance(part, tuple):
            out.append(_safe(part[0]), style=part[1])
        elif isinstance(part, Text):
            out.append_text(part)
        else:
            out.append(_safe(part))
    return out


def error_line(message: str) -> Text:
    return line(("error: ", "red"), message)


def _sample(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


CRAWL_ERRORS_SHOWN = 3  # error lines a crawl report shows; --json (and `status --json`) has the first 50


def crawl_errors(notes: Sequence, total: int, n: int = CRAWL_ERRORS_SHOWN, indent: str = "  ") -> list[Text]:
    """A few of a crawl's errors (``crawler.registry.runs.ErrorNote``): the reason, then the URL on a line of its
    own (it folds where it must), and how many more."""
    shown = []
    for e in notes[:n]:
        shown.append(line(indent, f"{e.source}: ", e.reason))
        if e.url:
            shown.append(line(indent, "  ", (e.url, "dim")))
    if total > min(n, len(notes)):
        shown.append(line(indent, f"and {total - min(n, len(notes)):,} more (--json lists the first 50)"))
    return shown


def _crawl_report(console: Console, s, rows: Sequence[tuple[str, object]], notes: list[Text]) -> None:
    color = {"ok": "green", "stopped": "yellow", "interrupted": "yellow"}.get(s.status, "red")
    console.print(line((f"crawl {s.status}", color), f" (run {s.run_id}, {s.mode}{', resumed' if s.resumed else ''})"))
    if s.note:
        console.print(line((s.note, "yellow")))
    table = Table.grid(padding=(0, 2))
    for label, value in rows:
        table.add_row(t(label), t(value))
    console.print(table)
    for text in crawl_errors(s.first_errors, s.errors):
        console.print(text)
    for note in notes:
        console.print(note)
    if s.error:
        console.print(error_line(s.error))


def crawl_summary(console: Console, s: "CrawlSummary") -> None:
    rows = [("pages", s.pages), ("models", s.models), ("versions", s.versions), ("models changed", s.written),
            ("new inpainting releases", s.new_inpainting), ("new sibling links", s.new_links),
            ("file headers read (ambiguous versions)", s.headers_read),
            ("  not a checkpoint, malformed or gone (404)", s.proofs_unreadable),
            ("not read yet (read by a later crawl)", s.proofs_deferred),
            ("verdicts the headers reversed", s.proofs_changed), ("retried requests", s.retries),
            ("errors", s.errors)]  # fmt: skip
    notes = [line("unknown base models (stored as-is): ", ", ".join(sorted(s.unknown_base_models)))] \
        if s.unknown_base_models else []  # fmt: skip
    if s.new_base_models:
        notes.append(line(("base models Civitai lists that this inpaint-advisor does not know yet", "yellow"),
                          " (a gap of the tool; a newer release may know them): ",
                          ", ".join(s.new_base_models)))  # fmt: skip
    _crawl_report(console, s, rows, notes)


def crawl_all_summary(console: Console, s) -> None:
    table = _compact(f"crawl all ({s.mode})")
    for col in ("source", "result", "time", "pages", "changed", "new inpainting", "note"):
        table.add_column(col, overflow="fold")
    for r in s.sources:
        color = {"ok": "green", "stopped": "yellow"}.get(r.status, "red")
        x = r.summary
        table.add_row(r.source, line((r.status, color)), f"{r.seconds:.0f} s", str(x.pages) if x else "",
                      str(x.written) if x else "", str(x.new_inpainting) if x else "", t((r.error or "")[:160]))
    console.print(table)
    for r in s.sources:
        if r.summary is not None and r.summary.errors:
            console.print(line(f"{r.source}: {r.summary.errors:,} errors"))
            for text in crawl_errors(r.summary.first_errors, r.summary.errors):
                console.print(text)
    if not s.ok:
        console.print(line(("some sources did not finish", "red"), ": run the same command again to resume them"))


def hf_crawl_summary(console: Console, s: "HfCrawlSummary") -> None:
    rows = [("pages", s.pages), ("repos listed", s.listed), ("new or changed repos inspected", s.inspected),
            ("skipped (LoRA, ControlNet, ...)", s.skipped), ("new inpainting releases", s.new_inpainting),
            ("gated or unavailable (recorded)", s.unavailable), ("new sibling links", s.new_links),
            ("new same-file links to Civitai", s.same_files),
            ("official mirrors alive and matching", s.officials_alive), ("requests", s.requests),
            ("retried requests", s.retries), ("errors", s.errors)]  # fmt: skip
    notes = [line(("official mirrors gone", "yellow"), " (recommendations moved to a live mirror): ",
                  ", ".join(s.officials_dead))] if s.officials_dead else []  # fmt: skip
    if s.route_files_missing:
        notes.append(line(("route files gone from the Hub", "yellow"), ": ", ", ".join(s.route_files_missing)))
    _crawl_report(console, s, rows, notes)


def _compact(title: str) -> Table:
    """A borderless table: `status` fits 80 columns, and long repo names fold instead of being cut."""
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
                 show_edge=False, collapse_padding=True)


def registry_status(console: Console, st: "RegistryStatus") -> None:
    console.print(line("registry ", (st.db, "bold")))
    console.print(line(f"{st.models:,} models, {st.versions:,} versions, {st.files:,} files; "
                       f"{st.inpainting_versions:,} inpainting versions, {st.links:,} inpainting links, "
                       f"{st.same_files:,} Civitai/Hugging Face same-file links"))  # fmt: skip
    if st.per_source:
        console.print(line("models per source: ", ", ".join(f"{k} {v:,}" for k, v in sorted(st.per_source.items()))))
    if st.families:
        table = _compact("Fine-tunes per family (dedicated inpainting models not counted)")
        columns: tuple[tuple[str, JustifyMethod], ...] = (
            ("family", "left"), ("models", "right"), ("own inpainting", "right"), ("coverage", "right"),
            ("official", "left"))  # fmt: skip
        for col, justify in columns:
            table.add_column(col, justify=justify)
        for f in st.families:
            table.add_row(t(f.family), f"{f.models:,}", f"{f.with_inpainting:,}", f"{f.coverage:.1%}",
                          "yes" if f.official_inpaint else "—")  # fmt: skip
        console.print(table)
    if st.unknown_base_models:
        console.print(line(("base models inpaint-advisor has no data for yet", "yellow"),
                           " (a gap of the tool; their models get no advice): ",
                           "; ".join(_with_examples(bm, n, st.unknown_examples.get(bm, []))
                                     for bm, n in st.unknown_base_models)))  # fmt: skip
    if st.civitai_lists_unknown:
        console.print(line(("base models Civitai lists that this release does not know", "yellow"),
                           " (its last crawl read them; a newer release may know them): ",
                           ", ".join(st.civitai_lists_unknown)))  # fmt: skip
    if st.not_image_base_models:
        console.print(line(("not image checkpoints", "dim"), " (stored, answered as such): ",
                           ", ".join(f"{bm} ({media}, {n})" for bm, media, n in st.not_image_base_models)))  # fmt: skip
    if st.officials:
        checked = max(o.checked_at for o in st.officials)
        table = _compact(f"Official checkpoints (last checked {checked:%Y-%m-%d %H:%M} UTC)")
        longest = max(len(o.repo) for o in st.officials)
        table.add_column("family", no_wrap=True)
        table.add_column("role", no_wrap=True)
        table.add_column("mirror", overflow="fold", min_width=min(longest, max(20, console.width - 30)))
        table.add_column("state", overflow="fold", min_width=5)
        for o in st.officials:
            state = line(("alive", "green")) if o.alive and o.matches else \
                line(("changed: ", "yellow"), o.detail) if o.alive else line(("gone", "red"))  # fmt: skip
            table.add_row(t(o.family), o.role, t(o.repo), state)
        console.print(table)
    else:
        console.print(line("official checkpoints: not checked yet (run ", ("inpaint-advisor crawl hf", "bold"), ")"))
    if st.runs:
        table = _compact("Recent crawls")
        for col in ("run", "source", "mode", "status", "started (UTC)", "pages", "models", "note"):
            table.add_column(col, overflow="fold")
        for r in st.runs:
            note = r.last_error or ("resumable" if r.cursor and r.status != "ok" else "")
            if r.errors:
                note = f"{r.errors:,} errors" + (f"; {note}" if note else "")
            table.add_row(str(r.id), t(r.source), r.mode, r.status, f"{r.started_at:%m-%d %H:%M}", str(r.pages),
                          f"{r.items:,}", t(note[:80]))  # fmt: skip
        console.print(table)
    for r in st.last_runs:
        if r.errors:
            console.print(line(f"errors of the last {r.source} crawl (run {r.id}): {r.errors:,}"))
            for text in crawl_errors(r.first_errors, r.errors):
                console.print(text)
    _builds(console, st)


def _builds(console: Console, st) -> None:
    if not st.builds:
        return
    table = _compact("Built and fetched here")
    for col in ("when (UTC)", "kind", "model", "file", "size"):
        table.add_column(col, overflow="fold")
    for b in st.builds:
        table.add_row(f"{b.created_at:%m-%d %H:%M}", b.kind, t(b.model_id or ""),
                      t(b.path) if b.present else line((b.path, "dim"), (" (gone)", "red")), f"{b.size / 1e9:.2f} GB")
    console.print(table)


def merge_result(console: Console, r) -> None:
    console.print(line(("wrote", "green"), f" {r.out} ({r.bytes_written / 1e9:.2f} GB, {r.dtype}) in "
                       f"{r.seconds:.1f}s on {r.device}"))  # fmt: skip
    console.print(line(f"{r.family} {r.variant}: {r.added} tensors merged, {len(r.channel_merged)} by channel "
                       f"({_sample(r.channel_merged)}), {r.copied} copied from A; M = {r.multiplier}"))  # fmt: skip
    if r.markers:
        console.print(line(f"carried B's prediction markers: {', '.join(r.markers)}"))
    for names, what in ((r.only_in_b, "keys only in B were dropped (output keys are A's)"),
                        (r.mismatched, "keys differ in shape and were copied from A"),
                        (r.missing_in_bc, "keys missing in B or C were copied from A")):  # fmt: skip
        if names:
            console.print(line((f"{len(names)} {what}:", "yellow"), " ", _sample(names)))
    if r.nonfinite:
        console.print(line((f"NaN/Inf in {len(r.nonfinite)} output tensors:", "red"), " ", _sample(r.nonfinite)))
    for w in r.warnings:
        console.print(line(("warning: ", "yellow"), w))


def _headline(rec, color: str) -> Text:
    """The answer in one line: its reason, where the reason says it in its own words ("Use its creator's
    inpainting release: ..."), else the kind's title before it; never both ("Use ...: Use ...")."""
    if rec.reason.startswith(("Use ", "Make ")):
        lead, sep, rest = rec.reason.partition(": ")
        return line((lead, f"bold {color}"), sep, rest)
    return line((_KIND_TITLE[rec.kind], f"bold {color}"), ": ", rec.reason)


_KIND_TITLE = {
    "built": "Built here",
    "already-inpainting": "Already an inpainting model",
    "own-release": "Use its own inpainting release",
    "sibling-release": "Use the creator's inpainting model",
    "community-release": "Use another creator's inpainting version of it",
    "official": "Use the official inpainting model",
    "build": "Build an inpainting version",
    "none": "No inpainting route",
    "patch": "Patch your model",
    "controlnet": "Use an inpainting ControlNet",
    "adapter": "Use an inpainting adapter",
    "lora": "Use a LoRA on your model",
    "fill-model": "Use a fill / edit model",
    "sampler": "Inpaint with your model itself",
}
ALTERNATIVES_SHOWN = 6  # one line each under the answer; --all shows every one as a panel


def _command_line(command, prompt: str = "$ ") -> Text:
    return line((prompt, "dim"), (shell_text(command), "bold cyan"))


_SOURCE = "source: "  # an evidence line that is a URL: printed whole after the panel, like the page


def _rec_lines(rec) -> list:
    """A recommendation's panel text for --all: its reason, what it points at, how to use it, its evidence (the
    commands and URLs, its sources' too, are printed whole after the panel)."""
    lines = [t(rec.reason)]
    target = rec.target
    if target is not None:
        facts = [("file", target.file), ("repo", target.repo), ("sha256", target.sha256),
                 ("size", f"{target.size:,} B" if target.size else None)]  # fmt: skip
        for label, value in facts:
            if value:
                lines.append(line((f"{label:>9} ", "dim"), value))
    lines += [line(("  how: ", "dim"), how) for how in rec.how]
    lines += [t(f"  · {ev}", "dim") for ev in rec.evidence if not ev.startswith(_SOURCE)]
    return lines



def _commands(rec) -> list:
    """The answer's commands in the order they run: what to fetch, then what to run (a build's one command where
    it has one: the raw merge is in --all and --json)."""
    if rec.run is not None:
        return [rec.run]
    return [*rec.downloads, *([rec.command] if rec.command else [])]


def _print_whole(console: Console, text: Text) -> None:
    """A command or URL on one line of its own, never wrapped by us (the terminal may fold it on screen; a copy
    still takes it whole)."""
    console.print(text, soft_wrap=True)


def _one_line(alt) -> Text:
    if alt.route is not None:
        what = alt.reason.split(": ", 1)[0]  # the route's name
    elif alt.kind == "build":
        what = "your model merged with the official pair (inpaint-advisor build)"
    else:
        what = alt.target.name if alt.target is not None else alt.reason
    score = f" (score {alt.score})" if alt.score is not None else ""
    title = _KIND_TITLE[alt.kind]
    return line(("  also: ", "dim"), title[0].lower() + title[1:], " — ", what, (score, "dim"))


def lookup_result(console: Console, r, *, full: bool = False) -> None:
    """The answer to a screen (``full``: every alternative as a panel with its files, how-to and sources)."""
    for note in r.notes:
        console.print(t(note, "dim"))
    if r.match is None and r.candidates:
        title = "Several models match “" if len(r.candidates) > 1 else "Did you mean this model for “"
        table = Table(title=line(title, r.query[:80], "”"))
        for col in ("score", "id", "name", "creator", "family", "downloads"):
            table.add_column(col, overflow="ellipsis" if col == "name" else "fold",
                             justify="right" if col == "downloads" else "left")  # fmt: skip
        for c in r.candidates:
            table.add_row(f"{c.score:.0f}", t(c.model_id), t(c.name), t(c.creator or ""), t(c.family or "?"),
                          f"{c.downloads:,}")  # fmt: skip
        console.print(table)
        console.print(line("Look one up by id, e.g. ", (f"inpaint-advisor lookup {r.candidates[0].model_id}", "bold")))
        return
    if r.match is None or r.recommendation is None:
        if not r.notes:
            console.print(line(("nothing matched", "red"), " “", r.query[:200], "”"))
        return
    m = r.match
    who = f" by {shorten(m.creator, 40)}" if m.creator else ""
    version = f" — {shorten(m.version_name, 60)}" if m.version_name else ""
    head = line((f"{shorten(m.name, 100)}{version}", "bold"), who, (f"  [{m.family or 'unknown family'}", "dim"),
                (f", base {m.base_model}]" if m.base_model else "]", "dim"))  # fmt: skip
    rec = r.recommendation
    color = {"none": "red", "build": "yellow"}.get(rec.kind, "green")
    if full:
        _full_view(console, r, head, color)
        return
    console.print(head)
    console.print(_headline(rec, color))
    if rec.target is not None and rec.target.url:
        _print_whole(console, line(("  page ", "dim"), rec.target.url))
    for command in _commands(rec):
        _print_whole(console, _command_line(command))
    for alt in r.alternatives[:ALTERNATIVES_SHOWN]:
        console.print(_one_line(alt))
    hidden = len(r.alternatives) - ALTERNATIVES_SHOWN
    more = f"{hidden} more, and " if hidden > 0 else ""
    if r.alternatives:
        console.print(t(f"{more}each with its files, how to use it and sources: --all (or --json)", "dim"))
    for w in r.warnings:
        console.print(line(("warning: ", "yellow"), w))


def _print_after_panel(console: Console, rec) -> None:
    target = rec.target
    for label, url in (("page", target.url), ("download", target.download_url)) if target is not None else ():
        if url:
            _print_whole(console, line((f"  {label} ", "dim"), url))
    for ev in rec.evidence:
        if ev.startswith(_SOURCE):
            _print_whole(console, line(("  source ", "dim"), ev.removeprefix(_SOURCE)))
    for command in [*rec.downloads, *([rec.command] if rec.command else []), *([rec.run] if rec.run else [])]:
        _print_whole(console, _command_line(command, f"{command.label}: $ " if command.label else "$ "))


def _full_view(console: Console, r, head: Text, color: str) -> None:
    """Every recommendation as a panel of text, its commands printed whole after it (outside its border)."""
    rec = r.recommendation
    console.print(Panel(Group(head, Text(""), *_rec_lines(rec)), title=_KIND_TITLE[rec.kind],
                        title_align="left", border_style=color))  # fmt: skip
    _print_after_panel(console, rec)
    for alt in r.alternatives:
        console.print(Panel(Group(*_rec_lines(alt)), title="Alternative: " + _KIND_TITLE[alt.kind],
                            title_align="left", border_style="dim"))  # fmt: skip
        _print_after_panel(console, alt)
    for w in r.warnings:
        console.print(line(("warning: ", "yellow"), w))


def probe_result(console: Console, p) -> None:
    table = Table.grid(padding=(0, 2))
    family = p.family or (f"none: a {p.media} model ({p.model})" if p.media != "image" else "unknown")
    rows = [("file", p.path), ("format", p.format), ("family", family), ("variant", p.variant),
            ("in channels", p.in_channels), ("prediction", p.prediction + (f" ({', '.join(p.markers)})" if p.markers
                                                                          else "")),
            ("dtype", p.dtype), ("parameters", f"{p.params / 1e9:.3f} B" if p.params else None),
            ("components", ", ".join(p.components)), ("architecture", p.architecture),
            ("sha256", p.sha256), ("AutoV2", p.autov2), ("AutoV3", p.autov3), ("AutoV1", p.autov1)]  # fmt: skip
    for label, value in rows:
        if value not in (None, ""):
            table.add_row(t(label, "dim"), t(value))
    console.print(table)
    for w in getattr(p, "warnings", []):
        console.print(line(("warning: ", "yellow"), w))


_ACTION = {"built": ("built", "green"), "downloaded-release": ("downloaded its inpainting release", "green"),
           "already-built": ("already built", "green"), "already-inpainting": ("already an inpainting model", "green"),
           "planned": ("plan", "yellow")}  # fmt: skip


def build_result(console: Console, r) -> None:
    word, color = _ACTION[r.action]
    m = r.match
    console.print(line((word, f"bold {color}"), ": ", (m.name, "bold"),
                       f" — {m.version_name}" if m.version_name else "", f"  [{m.family or 'unknown family'}]"))
    console.print(t(r.reason))
    if r.plan:
        table = _compact("Files")
        for col in ("role", "file", "size", "state"):
            table.add_column(col, overflow="fold")
        for item in r.plan:
            table.add_row(item.role, t(item.what), f"{item.size / 1e9:.2f} GB" if item.size else "?", item.state)
        console.print(table)
        console.print(line(f"to download and write: about {r.disk_needed / 1e9:.2f} GB"))
    if r.merge is not None and r.action == "planned":
        console.print(line(("merge: ", "dim"), (shell_text(r.merge), "bold cyan")))
    if r.pair is not None:
        how = "prepared now, for the next builds of the family" if r.pair.prepared_now else "A and C not read"
        console.print(line(("  from the prepared pair ", "dim"), r.pair.path, f" ({how})"))
    for d in r.downloads:
        how = "reused" if d.reused else ("resumed, " if d.resumed else "") + f"{d.bytes / 1e9:.2f} GB fetched"
        console.print(line(("  ", "dim"), d.path, f" ({how}, {'verified' if d.verified else 'unverified'})"))
    if r.output is not None:
        console.print(line(("output: ", "bold"), r.output.path, f" ({r.output.size / 1e9:.2f} GB"
                           + (f", sha256 {r.output.sha256[:12]}…" if r.output.sha256 else "") + ")"))  # fmt: skip
    for w in r.warnings:
        console.print(line(("warning: ", "yellow"), w))


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def cache_report(console: Console, r) -> None:
    console.print(line(("cache: ", "bold"), r.root, f"  ({_gb(r.total)} in all)"))
    if r.prepared:
        table = _compact("Prepared pairs (A - M*C, one per family: later builds read it instead of A and C)")
        for col in ("family", "A", "C", "M", "size", "made (UTC)"):
            table.add_column(col, overflow="fold")
        for p in r.prepared:
            table.add_row(p.family, t(p.inpaint), t(p.base), f"{p.multiplier:g}", _gb(p.size), p.created[:16])
        console.print(table)
    else:
        console.print(line(("no prepared pairs", "dim"), ": build with --prepare-pair to make one"))
    if r.files:
        table = _compact("Fetched files")
        for col in ("file", "size", "state"):
            table.add_column(col, overflow="fold")
        for f in r.files:
            table.add_row(t(f.path), _gb(f.size), "partial (resumes)" if f.partial else "complete")
        console.print(table)
    if r.partials:
        table = _compact("Partial files (interrupted downloads, unfinished pairs, hidden files of merges)")
        for col in ("file", "kind", "size", "owner"):
            table.add_column(col, overflow="fold")
        for p in r.partials:
            owner = "running" if p.alive else "gone" + (" (resumes)" if p.kind == "download" else "")
            table.add_row(t(p.path), p.kind, _gb(p.size), owner + (f", pid {p.pid}" if p.pid else ""))
        console.print(table)
        if not all(p.alive for p in r.partials):
            console.print(line(("`cache clear partial`", "bold"), " removes those whose owner is gone"))


def cache_cleared(console: Console, done) -> None:
    verb = "would remove" if done.dry_run else "removed"
    for path in done.removed:
        console.print(line((verb + " ", "green"), path))
    for path in done.busy:
        console.print(line(("in use, kept: ", "yellow"), path, " (a build is running: try again when it ends)"))
    console.print(line(f"{'would free' if done.dry_run else 'freed'} {_gb(done.freed)}"))


def _with_examples(base_model: str, versions: int, examples: list[str]) -> str:
    shown = f" (e.g. {', '.join(examples)})" if examples else ""
    return f"{base_model}: {versions} versions{shown}"


def health(console: Console, h) -> None:
    word, color = ("healthy", "green") if h.healthy else ("unhealthy", "red")
    console.print(line((word, f"bold {color}"), f" (limit {h.max_age_s / 3600:g} h)"))
    table = _compact("Sources")
    for col in ("source", "models", "last success (UTC)", "last crawl", "state"):
        table.add_column(col, overflow="fold")
    for s in h.sources:
        when = f"{s.last_success:%Y-%m-%d %H:%M}" if s.last_success else "never"
        state = "ok" if s.healthy and s.last_status else "; ".join(s.reasons) or "ok"
        table.add_row(s.source, f"{s.models:,}", when, s.last_status or "-", t(state))
    console.print(table)
    for r in h.reasons:
        console.print(line(("  - ", "red"), r))
    for gap in h.gaps:
        console.print(line(("  gap: ", "yellow"), gap))


def schedule_installed(console: Console, done) -> None:
    console.print(line(("scheduled", "green"), f" with {done.backend}"))
    for f in done.files:
        console.print(line("  wrote ", f))
    for entry in done.lines:
        console.print(line(("  ", "dim"), entry))
    for note in done.notes:
        console.print(line(("note: ", "yellow"), note))


def schedule_shown(console: Console, shown, last) -> None:
    if not shown.installed:
        console.print(line(("no schedule installed", "yellow"), f" ({shown.backend}): `inpaint-advisor schedule "
                           "install`"))  # fmt: skip
    for entry in shown.entries:
        console.print(line(("  ", "dim"), entry))
    for timer, when in shown.next_runs.items():
        console.print(line(f"  next {timer}: ", (when, "bold")))
    for s in last:
        when = f"{s.last_success:%Y-%m-%d %H:%M} UTC" if s.last_success else "never"
        console.print(line(f"  {s.source}: last success {when}, last crawl {s.last_status or '-'}"))


def schedule_removed(console: Console, done) -> None:
    if not (done.files or done.lines):
        console.print(line(("nothing to remove", "dim"), f" ({done.backend})"))
    for f in done.files:
        console.print(line("  removed ", f))
    if done.lines:
        console.print(line("  removed the crontab block"))
    for note in done.notes:
        console.print(line(("note: ", "yellow"), note))


_PARTNER = {"local": ("on disk", "green"), "built": ("built here", "green"),
            "already-inpainting": ("is one", "green"), "own-release": ("download its release", "cyan"),
            "sibling-release": ("download its release", "cyan"), "official": ("official model", "cyan"),
            "community-release": ("another's release", "cyan"),
            "build": ("build one", "yellow"), "none": ("none", "red"), "patch": ("patch it", "cyan"),
            "controlnet": ("a ControlNet", "cyan"), "adapter": ("an adapter", "cyan"),
            "lora": ("a LoRA", "cyan"),
            "fill-model": ("a fill model", "cyan"), "sampler": ("a sampler method", "cyan")}  # fmt: skip


def scan_result(console: Console, r) -> None:
    from pathlib import Path

    console.print(line(("scan: ", "bold"), r.root, f"  ({r.layout}; {len(r.checkpoints)} checkpoints, "
                       f"{len(r.skipped)} set aside)"))  # fmt: skip
    table = _compact("Checkpoints and their inpainting partners")
    for col in ("model", "family", "variant", "partner", "what to do"):
        table.add_column(col, overflow="fold")
    for c in r.checkpoints:
        p = c.partner
        word, color = _PARTNER.get(p.kind, (p.kind, "")) if p else ("?", "red")
        if p and p.path and p.kind in ("local", "built"):
            todo = t(Path(p.path).name)
        elif p and p.kind == "build":
            todo = t(shell_text(Command(["inpaint-advisor", "build", c.path])))
        elif p and p.buildable:  # a route ranks first; the reason starts with its name
            todo = t(f"{p.reason.split(':', 1)[0]} (or: {shell_text(Command(['inpaint-advisor', 'build', c.path]))})")
        elif p and p.target is not None:
            todo = t(" ".join(x for x in (p.target.file or p.target.name, p.target.repo and f"({p.target.repo})") if x))
        else:
            todo = t(p.reason[:80] if p else "")
        table.add_row(t(Path(c.path).name), c.family or "?", c.variant, line((word, color)), todo)
    console.print(table)
    for s in r.skipped:
        console.print(line(("  set aside: ", "dim"), Path(s.path).name, f" — {s.reason}"))
    if r.asked_civitai:
        console.print(line(("  ", "dim"), f"asked Civitai about {r.asked_civitai} unknown files: "
                           f"{r.found_on_civitai} models found"))  # fmt: skip
    for note in r.notes:
        console.print(line(("note: ", "yellow"), note))


def batch_result(console: Console, b) -> None:
    from pathlib import Path

    word = "would need" if b.dry_run else "needed"
    console.print(line(f"{len(b.items)} partners to get; disk {word}: about {b.disk_needed / 1e9:.2f} GB"))
    table = _compact("Batch")
    for col in ("model", "result", "output or reason"):
        table.add_column(col, overflow="fold")
    colors = {"done": "green", "skipped": "dim", "failed": "red", "planned": "cyan"}
    for i in b.items:
        table.add_row(t(Path(i.path).name), line((i.action or i.status if i.status == "done" else i.status,
                                                  colors.get(i.status, ""))),
                      t(Path(i.output).name if i.output and i.status == "done" else i.reason[:160]))  # fmt: skip
    console.print(table)
    console.print(line(f"done {b.count('done')}, skipped {b.count('skipped')}, failed {b.count('failed')}"
                       + ("; run the same command again to retry what failed" if b.count("failed") else "")))


def queued(console: Console, items) -> None:
    for q in items:
        state = f"job {q.job_id}"
        if q.already:
            state = f"already queued (job {q.job_id})" if q.job_id else "already queued"
        console.print(line((f"{state}: ", "bold"), q.query))
    if not items:
        console.print(t("nothing to queue", "dim"))


def jobs_table(console: Console, jobs) -> None:
    if not jobs:
        console.print(t("no jobs (queue builds with `inpaint-advisor build MODEL --enqueue`)", "dim"))
        return
    table = Table(box=None, padding=(0, 1))
    for col in ("id", "task", "status", "runs", "what", "worker", "error"):
        table.add_column(col, overflow="fold")
    color = {"succeeded": "green", "failed": "red", "doing": "yellow", "cancelled": "dim"}
    for j in jobs:
        what = j.args.get("query") or (f"tick {j.args['timestamp']}" if "timestamp" in j.args else "")
        table.add_row(str(j.id), j.task, t(j.status, color.get(j.status, "")), str(j.attempts), t(str(what)),
                      t(j.worker or ""), t((j.error or "")[:200], "red"))  # fmt: skip
    console.print(table)


_GET_WORD = {"planned": ("Plan", "cyan"), "ready": ("Ready", "green"), "nothing": ("Nothing to do", "green")}


def get_result(console: Console, r) -> None:
    """`get`: what was (or would be) placed where, then what to install and do in the UI. Paths and URLs are
    printed on lines of their own, outside any border, so that they copy whole."""
    word, color = _GET_WORD.get(r.action, (r.action, "bold"))
    if r.action == "ready" and not r.files and r.build is None:
        word = "Nothing to fetch"  # a sampler method: what is left is in the steps
    m = r.match
    console.print(line((word, f"bold {color}"), ": ", (m.name if m else r.query, "bold"),
                       f" — {m.version_name}" if m and m.version_name else "",
                       f"  [{m.family or 'unknown family'}]" if m else "", "  in ", (r.ui_name, "bold"), " at ",
                       r.root, "" if r.recognised else " (taken as its folder)"))  # fmt: skip
    a = r.answer
    score = f", score {a.score}" if a.score is not None else ""
    console.print(line(("answer: ", "bold"), (a.name, "bold"), f" ({a.kind}{score})"))
    console.print(t(a.reason, "dim"))
    for passed in r.passed_over:
        console.print(line(("passed over: ", "yellow"), passed))
    for p in r.files:
        state = {"present": "in place", "copied": "linked from the cache", "fetched": "fetched"}.get(p.state, p.state)
        check = "verified" if p.verified else ("unverified" if p.state in ("present", "fetched") else
                                              "sha256 pinned" if p.sha256 else "no sha256 pinned")  # fmt: skip
        size = _bytes(p.size) if p.size else f"about {_bytes(p.approx_size)}" if p.approx_size else "size unknown"
        console.print(line(("  ", ""), (f"{state}: ", "bold"), f"{size}, {check}"))
        console.print(line(("    ", ""), (p.path or p.destination, "cyan")), soft_wrap=True)  # copies whole
    b = r.build
    if b is not None:
        if b.reason != a.reason:
            console.print(line(("build: ", "bold"), b.reason))
        for item in b.plan:
            size = _bytes(item.size) if item.size else "size unknown"
            console.print(line(("  ", ""), (f"{item.role}: ", "bold"), item.what, f" ({item.state}, {size})"))
        if r.checkpoint:
            console.print(line(("  checkpoint:", "bold")))
            console.print(line(("    ", ""), (r.checkpoint, "cyan")), soft_wrap=True)
    if r.action == "planned" and r.disk_needed:
        console.print(line(f"to download and write: about {r.disk_needed / 1e9:.2f} GB"))
    for need in r.needs:
        console.print(line(("install first: ", "bold"), need), soft_wrap=True)
    for step in r.steps:
        console.print(line(("then: ", "bold"), step))
    if r.workflow_path:
        console.print(line(("workflow", "bold"), " (ComfyUI, API format):"))
        console.print(line(("    ", ""), (r.workflow_path, "cyan")), soft_wrap=True)
    for w in r.warnings:
        console.print(line(("warning: ", "yellow"), w))


def _bytes(n: int) -> str:
    return next(f"{n / scale:.2f} {unit}" for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1, "bytes"))
                if n >= scale or scale == 1)  # fmt: skip


def get_manifest(r) -> dict:
    """`get --manifest`: every file with where it comes from, its SHA256, size and destination (the shape of
    Krita AI Diffusion's resource lists: one entry per file), for other tools to fetch."""
    files = [{"kind": p.kind, "name": p.name, "url": p.url, "sha256": p.sha256, "size": p.size,
              "destination": p.destination, "state": p.state} for p in r.files]  # fmt: skip
    if r.build is not None:
        files += [{"kind": f"build input {item.role}", "name": item.what, "url": item.source or None,
                   "sha256": item.sha256, "size": item.size, "destination": None, "state": item.state}
                  for item in r.build.plan]  # fmt: skip
    return {"query": r.query, "ui": r.ui, "root": r.root, "answer": r.answer, "files": files,
            "build_output": r.build.output.path if r.build is not None and r.build.output else None,
            "needs": r.needs, "steps": r.steps}  # fmt: skip


def get_batch(console: Console, b) -> None:
    """`scan --get`: the disk needed, one row per checkpoint, each destination on a line of its own."""
    head = "Plan" if b.dry_run else "Done"
    console.print(line((f"{head}: ", "bold"), f"{len(b.items)} checkpoints in ", b.root, f" ({b.ui}); {b.files} "
                       f"distinct files, about {b.disk_needed / 1e9:.2f} GB to download and write"))  # fmt: skip
    for item in b.items:
        console.print(line((f"{item.status}: ", "bold"), (item.path, "cyan")), soft_wrap=True)
        if item.answer:
            console.print(line("  ", (item.answer, "bold"), f" ({item.kind})"))
        for f in item.files:
            console.print(line("    ", f), soft_wrap=True)
        if item.status in ("failed", "skipped") and item.reason:
            console.print(line("  ", (item.reason, "dim")))
    for need in b.needs:
        console.print(line(("install first: ", "bold"), need), soft_wrap=True)
    counts = ", ".join(f"{b.count(s)} {s}" for s in ("done", "skipped", "failed", "planned") if b.count(s))
    console.print(line(("summary: ", "bold"), counts or "nothing to get"))
