"""Read-only registry access for `lookup`, over plain sqlite3: no ORM import on the hot path.

Free-text search takes candidates from the FTS5 trigram index (typos, substrings, CJK) and ranks them with
rapidfuzz; only a few hundred names are ever scored in Python.
"""

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from rapidfuzz import fuzz

from crawler.names import normalize_name

CANDIDATES = 300
MIN_TRIGRAMS = 3
POSTINGS_BUDGET = 6000
GOOD_ENOUGH = 80.0


@dataclass
class VersionRecord:
    id: str
    model_id: str
    name: str
    base_model: str | None
    family: str | None
    published_at: str | None
    position: int
    is_inpainting: bool
    evidence: list[str] = field(default_factory=list)
    primary_file: str | None = None
    sha256: str | None = None
    download_url: str | None = None


@dataclass
class ModelRecord:
    id: str
    source: str
    source_id: str
    name: str
    creator: str | None
    base_model: str | None
    family: str | None
    is_inpainting: bool
    has_inpainting: bool
    score: float = 100.0


@dataclass
class LinkRecord:
    inpaint_version_id: str
    inpaint_model_id: str
    parent_model_id: str
    parent_version_id: str | None
    kind: str
    confidence: float
    evidence: list[str]


@dataclass
class OfficialState:
    alive: bool
    matches: bool
    checked_at: str
    detail: str


_MODEL_COLS = "id, source, source_id, name, creator, base_model, family, is_inpainting, has_inpainting"


class Registry:
    def __init__(self, path: Path):
        # read-only: a lookup never changes the registry, and never creates an empty one by accident
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'model_fts%'")}
        self.has_fts = "model_fts" in tables
        self.has_vocab = "model_fts_vocab" in tables

    @classmethod
    def open(cls, path: Path | None) -> "Registry | None":
        if path is None or not path.exists():
            return None
        try:
            reg = cls(path)
            reg.conn.execute("SELECT 1 FROM model LIMIT 1")
            return reg
        except sqlite3.Error:
            return None

    def close(self) -> None:
        self.conn.close()

    def _model(self, row) -> ModelRecord:
        return ModelRecord(*row[:7], bool(row[7]), bool(row[8]))

    def model(self, model_id: str) -> ModelRecord | None:
        row = self.conn.execute(f"SELECT {_MODEL_COLS} FROM model WHERE id = ?", (model_id,)).fetchone()
        if row is None and model_id.startswith("hf:"):  # Hub repo ids are case-insensitive
            row = self.conn.execute(
                f"SELECT {_MODEL_COLS} FROM model WHERE source = 'hf' AND lower(source_id) = ? LIMIT 1",
                (model_id[3:].lower(),),
            ).fetchone()
        return self._model(row) if row else None

    def _optional(self, sql: str, params: tuple = ()) -> list:
        """Rows of a table that registries from older versions may not have yet."""
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            return []

    def official_checks(self) -> dict[str, OfficialState]:
        """Mirror repo -> what the last Hugging Face crawl found there."""
        rows = self._optional("SELECT repo, alive, matches, checked_at, detail FROM officialcheck")
        return {r[0]: OfficialState(bool(r[1]), bool(r[2]), r[3], r[4]) for r in rows}

    def same_files(self, model_id: str) -> list[tuple[str, str, str]]:
        """(other model id, its version id, sha256) for each file published on both sources."""
        rows = self._optional(
            "SELECT model_b, version_b, sha256 FROM samefile WHERE model_a = ? UNION "
            "SELECT model_a, version_a, sha256 FROM samefile WHERE model_b = ?",
            (model_id, model_id),
        )
        return [tuple(r) for r in rows]

    def model_of_version(self, version_id: str) -> ModelRecord | None:
        row = self.conn.execute(
            f"SELECT {', '.join('m.' + c for c in _MODEL_COLS.split(', '))} FROM model m JOIN version v "
            "ON v.model_id = m.id WHERE v.id = ?",
            (version_id,),
        ).fetchone()
        return self._model(row) if row else None

    def versions(self, model_id: str) -> list[VersionRecord]:
        rows = self.conn.execute(
            "SELECT v.id, v.model_id, v.name, v.base_model, v.family, v.published_at, v.position, v.is_inpainting, "
            "v.inpaint_evidence, v.download_url, "
            '(SELECT f.name FROM file f WHERE f.version_id = v.id ORDER BY f."primary" DESC, f.id LIMIT 1), '
            '(SELECT f.sha256 FROM file f WHERE f.version_id = v.id ORDER BY f."primary" DESC, f.id LIMIT 1) '
            "FROM version v WHERE v.model_id = ? ORDER BY v.position",
            (model_id,),
        ).fetchall()
        return [
            VersionRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), json.loads(r[8] or "[]"),
                          r[10], r[11], r[9])
            for r in rows
        ]  # fmt: skip

    def by_hash(self, value: str, kind: str) -> tuple[str, str] | None:
        """(model id, version id) of the file with this hash."""
        value = value.upper()
        sql = "SELECT v.model_id, v.id FROM file f JOIN version v ON v.id = f.version_id WHERE {} LIMIT 1"
        if kind == "autov2":  # AutoV2 is the first 10 hex digits of the SHA256: a prefix range on its index
            row = self.conn.execute(sql.format("f.sha256 >= ? AND f.sha256 < ?"), (value, value + "~")).fetchone()
            if row is None:  # a file Civitai lists with an AutoV2 but no SHA256 (rare): a scan
                row = self.conn.execute(sql.format("f.autov2 = ?"), (value,)).fetchone()
        else:
            row = self.conn.execute(sql.format(f"f.{kind} = ?"), (value,)).fetchone()
        return (row[0], row[1]) if row else None

    def links_to(self, model_id: str) -> list[LinkRecord]:
        rows = self.conn.execute(
            "SELECT inpaint_version_id, inpaint_model_id, parent_model_id, parent_version_id, kind, confidence, "
            "evidence FROM inpaintlink WHERE parent_model_id = ? ORDER BY confidence DESC",
            (model_id,),
        ).fetchall()
        return [LinkRecord(*r[:6], json.loads(r[6] or "[]")) for r in rows]

    def links_from(self, inpaint_model_id: str) -> list[LinkRecord]:
        rows = self.conn.execute(
            "SELECT inpaint_version_id, inpaint_model_id, parent_model_id, parent_version_id, kind, confidence, "
            "evidence FROM inpaintlink WHERE inpaint_model_id = ?",
            (inpaint_model_id,),
        ).fetchall()
        return [LinkRecord(*r[:6], json.loads(r[6] or "[]")) for r in rows]

    def _fts_candidates(self, wanted: str, widen: bool = False) -> list[int]:
        """Rowids of names sharing the query's rarest trigrams. A typo breaks only the trigrams it touches, and
        ranking cost grows with the posting lists ORed together, so the rarest trigrams are taken up to a
        budget of postings (``widen`` spends more, for a second try when the first finds nothing good)."""
        grams = sorted({wanted[i : i + 3] for i in range(len(wanted) - 2) if " " not in wanted[i : i + 3]})
        if not grams:
            return []
        if self.has_vocab:
            marks = ",".join("?" * len(grams))
            counts = dict(self.conn.execute(f"SELECT term, doc FROM model_fts_vocab WHERE term IN ({marks})", grams))
            chosen, spent = [], 0
            for doc, g in sorted((counts[g], g) for g in grams if g in counts):
                if len(chosen) >= MIN_TRIGRAMS and spent + doc > POSTINGS_BUDGET * (8 if widen else 1):
                    break
                chosen.append(g)
                spent += doc
            grams = chosen
        if not grams:
            return []
        match = " OR ".join('"' + g.replace('"', '""') + '"' for g in grams)
        sql = "SELECT rowid FROM model_fts WHERE model_fts MATCH ? ORDER BY rank LIMIT ?"
        return [r[0] for r in self.conn.execute(sql, (match, CANDIDATES))]

    def _all_trigram_candidates(self, wanted: str) -> list[int] | None:
        """Rowids of names containing every trigram of the query: found by intersecting posting lists, no ranking,
        so it is fast. None when there are too many to have seen them all (the ranked search decides then)."""
        grams = sorted({wanted[i : i + 3] for i in range(len(wanted) - 2) if " " not in wanted[i : i + 3]})
        if len(grams) < 2:
            return None
        match = " AND ".join('"' + g.replace('"', '""') + '"' for g in grams)
        ids = [r[0] for r in self.conn.execute("SELECT rowid FROM model_fts WHERE model_fts MATCH ? LIMIT ?",
                                               (match, CANDIDATES + 1))]  # fmt: skip
        return ids if len(ids) <= CANDIDATES else None

    def exact(self, text: str) -> ModelRecord | None:
        """The one model whose normalised name is ``text``'s, if exactly one is."""
        rows = self.conn.execute(
            f"SELECT {_MODEL_COLS} FROM model WHERE name_norm = ? LIMIT 2", (normalize_name(text),)
        ).fetchall()
        return self._model(rows[0]) if len(rows) == 1 else None

    def search(self, text: str, limit: int = 10) -> list[ModelRecord]:
        """Models ranked by how well their name matches ``text``; best first, scores 0-100."""
        wanted = normalize_name(text)
        if not wanted:
            return []
        if (exact := self.exact(wanted)) is not None:  # the name as written: no need to rank anything
            return [exact]
        use_fts = self.has_fts and len(wanted.replace(" ", "")) >= 3
        if use_fts:
            # Most queries are a name with a dropped letter, a missing suffix or different punctuation: every
            # trigram still occurs in the name. BM25-ranking the union of posting lists costs 100-500 ms on a
            # large registry, intersecting them a millisecond, so try that first.
            ids = self._all_trigram_candidates(wanted)
            ranked = self._score(wanted, ids) if ids else []
            if ranked and ranked[0].score >= GOOD_ENOUGH:
                return ranked[:limit]
        ranked = self._score(wanted, self._fts_candidates(wanted) if use_fts else None)
        if use_fts and (not ranked or ranked[0].score < GOOD_ENOUGH):
            ranked = self._score(wanted, self._fts_candidates(wanted, widen=True))
        return ranked[:limit]

    def _score(self, wanted: str, ids: list[int] | None) -> list[ModelRecord]:
        if ids:
            marks = ",".join("?" * len(ids))
            rows = self.conn.execute(f"SELECT {_MODEL_COLS}, name_norm FROM model WHERE rowid IN ({marks})", ids)
        elif ids is None:  # short queries, or no FTS (PostgreSQL-built files): a bounded substring scan
            rows = self.conn.execute(
                f"SELECT {_MODEL_COLS}, name_norm FROM model WHERE name_norm LIKE ? LIMIT ?",
                (f"%{wanted}%", CANDIDATES),
            )
        else:
            return []
        scored = []
        for row in rows:
            model = self._model(row)
            model.score = max(fuzz.WRatio(wanted, row[9]), fuzz.token_set_ratio(wanted, row[9]))
            scored.append(model)
        # dedicated inpainting models rank just below their parent at equal score
        scored.sort(key=lambda m: (-m.score, m.is_inpainting, len(m.name)))
        return scored
