"""Candidate names for a free-text lookup, from each engine's trigram index: a typo breaks only the trigrams it
touches, so a name that shares most of the query's trigrams is a candidate. ``candidates(wanted)`` yields sets of
model rows (``reader.MODEL_COLS`` plus ``name_norm`` and ``downloads``), cheapest first; ``advisor.advice.match`` scores
them, and lookup stops at the first good enough one.
"""

from collections.abc import Iterator

CANDIDATES = 300
MIN_TRIGRAMS = 3
POSTINGS_BUDGET = 6000
_COLS = "id, source, source_id, name, creator, base_model, family, is_inpainting, has_inpainting, name_norm, downloads"
_COLS_BEFORE_5 = _COLS.replace("downloads", "0")  # migration 5 added the download counts


def _trigrams(wanted: str) -> list[str]:
    return sorted({wanted[i : i + 3] for i in range(len(wanted) - 2) if " " not in wanted[i : i + 3]})


def _columns(reader) -> str:
    return _COLS if reader.state.version >= 5 else _COLS_BEFORE_5


def _long_enough(wanted: str) -> bool:
    return len(wanted.replace(" ", "")) >= 3


class SqliteNames:
    """FTS5's trigram tokenizer (``model_fts``) and its vocabulary (``model_fts_vocab``)."""

    def __init__(self, reader):
        self.reader = reader
        self.cols = _columns(reader)
        tables = {r[0] for r in reader.rows("SELECT name FROM sqlite_master WHERE name LIKE 'model_fts%%'")}
        self.has_fts = "model_fts" in tables
        self.has_vocab = "model_fts_vocab" in tables

    def candidates(self, wanted: str) -> Iterator[list]:
        if not (self.has_fts and _long_enough(wanted)):
            yield self._substring(wanted)
            return
        # Most queries are a name with a dropped letter, a missing suffix or different punctuation: every
        # trigram still occurs in the name. BM25-ranking the union of posting lists costs 100-500 ms on a large
        # registry, intersecting them (and ordering the few thousand found by downloads) a few, so that comes
        # first, with the names spelled alike without spaces (trigrams do not cross a space).
        yield self._spaceless(wanted) + self._models(self._all_trigrams(wanted))
        yield self._models(self._rarest_trigrams(wanted))
        yield self._models(self._rarest_trigrams(wanted, widen=True))

    def _models(self, ids: list[int]) -> list:
        if not ids:
            return []
        return self.reader.rows(f"SELECT {self.cols} FROM model WHERE rowid IN (%(ids)s)", ids=ids)

    def _substring(self, wanted: str) -> list:
        """Short queries, or a registry without the index: a bounded substring scan. (Normalised names and
        queries hold no LIKE wildcards: punctuation is a space.)"""
        return self.reader.rows(f"SELECT {self.cols} FROM model WHERE name_norm LIKE %(pattern)s LIMIT %(limit)s",
                                pattern=f"%{wanted}%", limit=CANDIDATES)  # fmt: skip

    def _rarest_trigrams(self, wanted: str, widen: bool = False) -> list[int]:
        """Rowids of names sharing the query's rarest trigrams. Ranking cost grows with the posting lists ORed
        together, so the rarest trigrams are taken up to a budget of postings (``widen`` spends more)."""
        grams = _trigrams(wanted)
        if grams and self.has_vocab:
            counts = dict(
                self.reader.rows("SELECT term, doc FROM model_fts_vocab WHERE term IN (%(grams)s)", grams=grams)
            )
            chosen: list[str] = []
            spent = 0
            for doc, g in sorted((counts[g], g) for g in grams if g in counts):
                if len(chosen) >= MIN_TRIGRAMS and spent + doc > POSTINGS_BUDGET * (8 if widen else 1):
                    break
                chosen.append(g)
                spent += doc
            grams = chosen
        if not grams:
            return []
        match = " OR ".join('"' + g.replace('"', '""') + '"' for g in grams)
        sql = "SELECT rowid FROM model_fts WHERE model_fts MATCH %(match)s ORDER BY rank LIMIT %(limit)s"
        return [r[0] for r in self.reader.rows(sql, match=match, limit=CANDIDATES)]

    def _spaceless(self, wanted: str) -> list:
        return self.reader.rows(f"SELECT {self.cols} FROM model WHERE replace(name_norm, ' ', '') = %(compact)s "
                                "LIMIT %(limit)s", compact=wanted.replace(" ", ""), limit=CANDIDATES)  # fmt: skip

    def _all_trigrams(self, wanted: str) -> list[int]:
        """Rowids of names containing every trigram of the query (posting lists intersected), the most
        downloaded first: a popular name is not crowded out by its thousand look-alikes."""
        grams = _trigrams(wanted)
        if len(grams) < 2:
            return []
        match = " AND ".join('"' + g.replace('"', '""') + '"' for g in grams)
        order = "downloads DESC, " if self.reader.state.version >= 5 else ""
        sql = (f"SELECT rowid FROM model WHERE rowid IN (SELECT rowid FROM model_fts WHERE model_fts MATCH %(match)s) "
               f"ORDER BY {order}rowid LIMIT %(limit)s")  # fmt: skip
        return [r[0] for r in self.reader.rows(sql, match=match, limit=CANDIDATES)]


class PostgresNames:
    """pg_trgm's GiST index (``ix_model_name_norm_trgm``), as nearest-neighbour searches: the names nearest to
    the query as a whole (``<->``, typos), then those holding it as a part (``<<->``, "majicmix" in "majicmix
    realistic"), then LIKE for what has no trigrams (short queries, letters the server's locale does not count
    as such). No threshold to tune: the 300 nearest go to rapidfuzz."""

    _NEAREST = [
        "SELECT {cols} FROM model ORDER BY name_norm <-> %(wanted)s LIMIT %(limit)s",
        "SELECT {cols} FROM model ORDER BY %(wanted)s <<-> name_norm LIMIT %(limit)s",
    ]
    # the names holding the query, the most downloaded first (a popular name among its thousand look-alikes),
    # and those that are the query without spaces
    _POPULAR = ("SELECT {cols} FROM model WHERE name_norm LIKE %(pattern)s ORDER BY downloads DESC LIMIT %(limit)s",
                "SELECT {cols} FROM model WHERE replace(name_norm, ' ', '') = %(compact)s LIMIT %(limit)s")  # fmt: skip

    def __init__(self, reader):
        self.reader = reader
        self.cols = _columns(reader)

    def candidates(self, wanted: str) -> Iterator[list]:
        if _long_enough(wanted) and self.reader.state.version >= 5:
            holding, spaceless = (sql.format(cols=self.cols) for sql in self._POPULAR)
            yield self.reader.rows(holding, pattern=f"%{wanted}%", limit=CANDIDATES) + \
                self.reader.rows(spaceless, compact=wanted.replace(" ", ""), limit=CANDIDATES)  # fmt: skip
        if _long_enough(wanted) and self.reader.state.version >= 3:  # migration 3 made the index
            for sql in self._NEAREST:
                yield self.reader.rows(sql.format(cols=self.cols), wanted=wanted, limit=CANDIDATES)
        yield self.reader.rows(f"SELECT {self.cols} FROM model WHERE name_norm LIKE %(pattern)s LIMIT %(limit)s",
                               pattern=f"%{wanted}%", limit=CANDIDATES)  # fmt: skip
