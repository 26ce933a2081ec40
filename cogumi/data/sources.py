"""Loaders for the seven public instruction datasets, each in its own real schema.

Every raw record becomes either a normalised `Record` or a `Quarantined` entry that names
the file, the line (or row) and the reason. Nothing is dropped silently: phase 0 counts
both, and its gate checks that records in = kept + removed + quarantined.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

DOMAINS = ("code", "math", "reasoning", "science", "conversation", "creative")


@dataclass(frozen=True)
class Record:
    id: str
    source: str
    source_id: str
    domain: str
    instruction: str
    response: str
    system: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Quarantined:
    source: str
    location: str
    """file:line for JSON Lines, file[index] for JSON lists, file row N for Parquet."""
    reason: str
    raw: str

    def to_dict(self) -> dict:
        return asdict(self)


def stable_id(source: str, source_id: str) -> str:
    return hashlib.sha256(f"{source}\0{source_id}".encode()).hexdigest()[:16]


_CODE = re.compile(r"\b(def |class |function|python|javascript|java\b|sql|code|program|"
                   r"algorithm|compile|return\b|array|string\b|loop)", re.I)
_MATH = re.compile(r"(\d+\s*[-+*/x×÷^=]\s*\d+|\bhow many\b|\bsolve\b|\bequation\b|\bsum\b|"
                   r"\bproduct\b|\bpercent\b|\bcalculate\b|\\boxed|\bfraction\b)", re.I)
_SCIENCE = re.compile(r"\b(physics|chemistry|biology|atom|molecule|cell|energy|planet|"
                      r"photosynthesis|gravity|species|climate|scientific)\b", re.I)
_CREATIVE = re.compile(r"\b(poem|story|haiku|write a song|lyrics|imagine|creative|fiction)\b",
                       re.I)


def classify_domain(instruction: str, default: str) -> str:
    """Keyword rules over the instruction; a source's default when nothing matches."""
    for domain, pattern in (("code", _CODE), ("math", _MATH), ("creative", _CREATIVE),
                            ("science", _SCIENCE)):
        if pattern.search(instruction):
            return domain
    return default


_DOLLY_DOMAINS = {"creative_writing": "creative", "brainstorming": "creative",
                  "open_qa": "conversation", "general_qa": "conversation",
                  "closed_qa": "reasoning", "information_extraction": "reasoning",
                  "classification": "reasoning", "summarization": "reasoning"}


class SchemaError(ValueError):
    pass


def _text(raw: dict, key: str) -> str:
    if key not in raw:
        raise SchemaError(f"missing field '{key}'")
    value = raw[key]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SchemaError(f"field '{key}' is {type(value).__name__}, expected a string")
    return value


def _join(instruction: str, extra: str) -> str:
    return f"{instruction}\n\n{extra}" if extra.strip() else instruction


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def _parse_hh(transcript: str) -> tuple[str, str]:
    """Anthropic-HH: '\\n\\nHuman: ...\\n\\nAssistant: ...'. The last assistant turn is the
    response; everything before it (all earlier turns) is the instruction."""
    parts = _HH_TURN.split(transcript)
    turns = list(zip(parts[1::2], parts[2::2], strict=False))
    if not turns or turns[-1][0] != "Assistant":
        raise SchemaError("transcript does not end with an Assistant turn")
    history = turns[:-1]
    if len(history) == 1:
        instruction = history[0][1].strip()
    else:
        instruction = "\n\n".join(f"{who}: {text.strip()}" for who, text in history)
    return instruction, turns[-1][1].strip()


def normalise(schema: str, raw: dict, source: str, index: int) -> Record:
    """One raw record in its source's schema → a Record. Raises SchemaError naming the field."""
    if not isinstance(raw, dict):
        raise SchemaError(f"record is {type(raw).__name__}, expected an object")
    system = ""
    if schema == "openorca":
        source_id = _text(raw, "id")
        system = _text(raw, "system_prompt")
        instruction, response, default = _text(raw, "question"), _text(raw, "response"), "reasoning"
    elif schema in ("alpaca", "code_alpaca"):
        source_id = str(index)
        instruction = _join(_text(raw, "instruction"), _text(raw, "input"))
        response = _text(raw, "output")
        default = "code" if schema == "code_alpaca" else "conversation"
    elif schema == "wizardlm":
        source_id = str(raw.get("idx", index))
        if "conversations" in raw:  # the 196k release is ShareGPT-shaped
            turns = raw["conversations"]
            if not isinstance(turns, list) or len(turns) < 2:
                raise SchemaError("field 'conversations' needs at least two turns")
            instruction, response = str(turns[0].get("value", "")), str(turns[1].get("value", ""))
        else:
            instruction, response = _text(raw, "instruction"), _text(raw, "output")
        default = "conversation"
    elif schema == "dolly":
        source_id = str(index)
        instruction = _join(_text(raw, "instruction"), _text(raw, "context"))
        response = _text(raw, "response")
        default = _DOLLY_DOMAINS.get(_text(raw, "category"), "conversation")
    elif schema == "metamathqa":
        source_id = str(index)
        instruction, response, default = _text(raw, "query"), _text(raw, "response"), "math"
    elif schema == "anthropic_hh":
        source_id = str(index)
        instruction, response = _parse_hh(_text(raw, "chosen"))
        default = "conversation"
    else:
        raise SchemaError(f"unknown schema {schema!r}")
    # Sources that are one domain by construction keep it; mixed sources are classified.
    if schema in ("metamathqa", "code_alpaca"):
        domain = default
    else:
        domain = classify_domain(instruction, default)
    return Record(stable_id(source, source_id), source, source_id, domain,
                  instruction.strip(), response.strip(), system.strip())


def _raw_records(path: Path) -> Iterator[tuple[str, dict | None, str]]:
    """(location, raw record or None, error) for every record in a local file."""
    name = str(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several types for damaged files
            yield f"{name}", None, f"unreadable Parquet file: {exc}"
            return
        row = 0
        for group in range(pf.num_row_groups):
            try:
                rows = pf.read_row_group(group).to_pylist()
            except Exception as exc:
                yield f"{name} row group {group}", None, f"unreadable row group: {exc}"
                continue
            for raw in rows:
                yield f"{name} row {row}", raw, ""
                row += 1
        return
    data = path.read_bytes()
    if path.suffix == ".jsonl":
        for n, line in enumerate(data.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                yield f"{name}:{n}", json.loads(line.decode("utf-8")), ""
            except UnicodeDecodeError as exc:
                yield f"{name}:{n}", None, f"not UTF-8 ({exc.reason} at byte {exc.start})"
            except json.JSONDecodeError as exc:
                yield f"{name}:{n}", None, f"malformed JSON ({exc.msg}, column {exc.colno})"
        return
    try:
        items = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        yield name, None, f"unreadable JSON file: {exc}"
        return
    if not isinstance(items, list):
        yield name, None, "expected a JSON list of records"
        return
    for i, raw in enumerate(items):
        yield f"{name}[{i}]", raw, ""


def load_local_source(source: str, schema: str, path: Path,
                      display_root: Path | None = None) -> Iterator[Record | Quarantined]:
    """Every record of a local source file, normalised or quarantined with its location."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: data source {source!r} not found")
    for index, (location, raw, error) in enumerate(_raw_records(path)):
        if display_root is not None:
            location = location.replace(str(display_root) + "/", "")
        if raw is None:
            yield Quarantined(source, location, error, "")
            continue
        try:
            yield normalise(schema, raw, source, index)
        except SchemaError as exc:
            yield Quarantined(source, location, str(exc), json.dumps(raw, default=str)[:2000])


SCHEMA_COLUMNS: dict[str, tuple[tuple[str, ...], ...]] = {
    "openorca": (("id", "system_prompt", "question", "response"),),
    "alpaca": (("instruction", "input", "output"),),
    "wizardlm": (("instruction", "output"), ("conversations",)),
    "dolly": (("instruction", "context", "response", "category"),),
    "metamathqa": (("query", "response"),),
    "code_alpaca": (("instruction", "input", "output"),),
    "anthropic_hh": (("chosen",),),
}
"""The columns `normalise` reads, per schema (any one of the alternatives: WizardLM's 70k
release has instruction/output, its 196k release ShareGPT conversations)."""


def missing_columns(alternatives: tuple[tuple[str, ...], ...],
                    columns: list[str] | None) -> list[str]:
    """The columns a dataset with `columns` lacks of a schema's `alternatives` (none when it
    has all of one alternative, or when its columns are not known before reading): of the
    alternatives, the one it comes closest to."""
    if columns is None:
        return []
    have = set(columns)
    best: list[str] | None = None
    for alternative in alternatives:
        lacking = [c for c in alternative if c not in have]
        if not lacking:
            return []
        if best is None or len(lacking) < len(best):
            best = lacking
    return best or []


def require_columns(where: str, schema: str, alternatives: tuple[tuple[str, ...], ...],
                    columns: list[str] | None) -> None:
    """Refuse a hub dataset (`where`: its id, config and split) without the columns its
    schema reads, in one line naming them: the one check for sources and benchmarks alike."""
    lacking = missing_columns(alternatives, columns)
    if lacking:
        raise SchemaError(f"hub dataset {where} has no column {', '.join(map(repr, lacking))} "
                          f"of schema {schema!r} (its columns: {', '.join(columns or [])})")


def hub_where(hub_id: str, split: str, config: str | None = None) -> str:
    """How a hub dataset's split is named in messages: `openai/gsm8k (config main, split test)`."""
    return f"{hub_id} ({'' if config is None else f'config {config}, '}split {split})"


def hub_dataset(hub_id: str, split: str, streaming: bool = False, config: str | None = None):
    """A hub dataset through `datasets.load_dataset`: from the hub, or from the local cache
    with HF_HUB_OFFLINE=1 (what a first online load left there)."""
    import datasets
    return datasets.load_dataset(hub_id, config, split=split, streaming=streaming)


def load_hub_source(source: str, schema: str, hub_id: str,
                    split: str) -> Iterator[Record | Quarantined]:
    """Every row of a hub dataset's split, normalised or quarantined with its row number.
    A dataset without the schema's columns is refused whole (SchemaError, one line)."""
    dataset = hub_dataset(hub_id, split)
    require_columns(hub_where(hub_id, split), schema, SCHEMA_COLUMNS[schema],
                    list(dataset.column_names))
    for index, raw in enumerate(dataset):
        location = f"hub:{hub_id}[{split}] row {index}"
        try:
            yield normalise(schema, raw, source, index)
        except SchemaError as exc:
            yield Quarantined(source, location, str(exc), json.dumps(raw, default=str)[:2000])
