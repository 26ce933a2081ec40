"""The deployable bundle: one folder laid out as a Hugging Face model repository.

```
bundle/
  model.gguf              the shipped base (2C), what the server loads
  model.gguf.zst          its zstd-packed copy (2D), for download
  modifiers/<name>.gguf   each domain modifier as a GGUF LoRA (3A/3B/3C)
  router/                 the router (4A), read by cogumi.routing.Router.load
  escalation.json         the escalation model (4B), cogumi.routing.Escalation.load
  thresholds.json         the chosen threshold (4C): escalate when p_wrong >= threshold
  teacher.json            where escalated requests go (an environment variable name for a key,
                          never the key)
  README.md               the model card
  manifest.json           what the server needs to know, and the sha256 of every other file
```

The manifest is the bundle's root of trust: `verify_bundle` checks every file it lists
against its digest, that no file is missing or unlisted, and that each file loads with
the library that will read it at serving time. The server only reads the bundle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cogumi.artifacts import sha256_file

MANIFEST = "manifest.json"
FORMAT = "cogumi-bundle/1"
BASE_ROUTE = "base"
SYSTEM_MODEL = "cogumi"
LOCAL_ROUTE = "local"
"""`cogumi/local`: the routed system without escalation, its own answers (5B's claim is
measured on them: a system that sends everything to the teacher is the teacher)."""
"""The model name of the routed system; each fixed route is "cogumi/<route>"."""


class BundleError(RuntimeError):
    """A bundle that cannot be served or does not verify: one line naming the file and key."""


@dataclass(frozen=True)
class Modifier:
    name: str
    file: str
    """Path of the GGUF LoRA inside the bundle (modifiers/<name>.gguf)."""
    info: dict = field(default_factory=dict)
    """The modifier's modifier.json (phase, domain, task, lora_rank, lora_alpha, ...)."""


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict
    base: str
    packed: str | None
    modifiers: dict[str, Modifier]
    router: str | None
    escalation: str | None
    thresholds: str | None
    teacher: dict | None
    serving: dict

    @property
    def routes(self) -> tuple[str, ...]:
        return (BASE_ROUTE, *self.modifiers)

    def path(self, rel: str) -> Path:
        return self.root / rel

    @property
    def threshold(self) -> float | None:
        if self.thresholds is None:
            return None
        return float(_read_json(self.path(self.thresholds))["threshold"])

    @property
    def model_names(self) -> tuple[str, ...]:
        """What /v1/models lists: the routed system, then each fixed route."""
        return (SYSTEM_MODEL, f"{SYSTEM_MODEL}/{LOCAL_ROUTE}",
                *(f"{SYSTEM_MODEL}/{r}" for r in self.routes))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: missing") from None
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: not readable JSON ({e})") from None


def _key(obj: dict, key: str, where: str, kind: type | tuple[type, ...]):
    if key not in obj:
        raise BundleError(f"{where}: key {key!r} is missing")
    value = obj[key]
    if not isinstance(value, kind):
        raise BundleError(f"{where}: key {key!r} must be {getattr(kind, '__name__', kind)}, "
                          f"not {type(value).__name__}")
    return value


def load_bundle(root: str | Path) -> Bundle:
    """Read a bundle's manifest (no digests checked: that is verify_bundle's job, and
    reading every byte of a base GGUF at each start would be slow)."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"{root}: not a folder")
    where = str(root / MANIFEST)
    manifest = _read_json(root / MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{where}: key 'format' must be {FORMAT!r}")
    _key(manifest, "files", where, dict)
    system = _key(manifest, "system", where, dict)
    swhere = f"{where}: system"
    base = _key(system, "base", swhere, str)
    mods_raw = _key(system, "modifiers", swhere, dict)
    modifiers = {}
    for name, entry in mods_raw.items():
        if name in (BASE_ROUTE, LOCAL_ROUTE) or "/" in name:
            raise BundleError(f"{swhere}.modifiers: {name!r} is not a modifier name")
        modifiers[name] = Modifier(name, _key(entry, "file", f"{swhere}.modifiers.{name}", str),
                                   dict(entry.get("info", {})))
    teacher = system.get("teacher")
    bundle = Bundle(root=root, manifest=manifest, base=base, packed=system.get("packed"),
                    modifiers=modifiers, router=system.get("router"),
                    escalation=system.get("escalation"), thresholds=system.get("thresholds"),
                    teacher=_read_json(root / teacher) if teacher else None,
                    serving=dict(_key(system, "serving", swhere, dict)))
    for rel in (bundle.base, *(m.file for m in modifiers.values())):
        if not bundle.path(rel).is_file():
            raise BundleError(f"{bundle.path(rel)}: named in {where} but missing")
    return bundle


def file_table(root: Path) -> dict[str, dict]:
    """{relative path: {"sha256", "bytes"}} for every file under root but the manifest."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel != MANIFEST:
            out[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return out


def write_manifest(root: Path, system: dict, extra: dict | None = None) -> dict:
    """Write manifest.json last, over the files already in the bundle."""
    manifest = {"format": FORMAT, "system": system, **(extra or {}),
                "files": file_table(root)}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def verify_bundle(root: str | Path, *, load: bool = True) -> list[str]:
    """Every problem with a bundle, one line each (empty: it verifies). Digests and sizes of
    every listed file, files on disk that the manifest does not list, and (`load`) that each
    file loads: the base GGUF and every modifier in llama.cpp (each LoRA against the base),
    the packed copy decompresses to the base's bytes, the router and escalation model
    through cogumi.routing, the JSON files parse."""
    root = Path(root)
    try:
        bundle = load_bundle(root)
    except BundleError as e:
        return [str(e)]
    problems = []
    listed = bundle.manifest["files"]
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {
        MANIFEST}
    for rel in sorted(on_disk - set(listed)):
        problems.append(f"{root / rel}: not listed in {MANIFEST}")
    for rel, entry in sorted(listed.items()):
        path = root / rel
        if not path.is_file():
            problems.append(f"{path}: listed in {MANIFEST} but missing")
            continue
        if path.stat().st_size != entry.get("bytes"):
            problems.append(f"{path}: {path.stat().st_size} bytes, manifest says "
                            f"{entry.get('bytes')}")
            continue
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            problems.append(f"{path}: sha256 {digest}, manifest says {entry.get('sha256')}")
    if problems or not load:
        return problems
    return problems + _load_problems(bundle)


def _load_problems(bundle: Bundle) -> list[str]:
    problems = []
    for rel in bundle.manifest["files"]:
        if rel.endswith(".json"):
            try:
                json.loads(bundle.path(rel).read_text())
            except ValueError as e:
                problems.append(f"{bundle.path(rel)}: not JSON ({e})")
    if bundle.packed:
        problems += _packed_problems(bundle)
    try:
        from cogumi.serving.engine import Engine
        engine = Engine(bundle.path(bundle.base),
                        {n: bundle.path(m.file) for n, m in bundle.modifiers.items()},
                        n_ctx=64, n_threads=int(bundle.serving.get("n_threads", 1)))
        engine.close()
    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
        problems.append(f"{bundle.root}: llama.cpp could not load the base and its "
                        f"modifiers: {e}")
    if bundle.router or bundle.escalation:
        try:
            from cogumi.serving.system import load_routing
            load_routing(bundle)
        except Exception as e:  # noqa: BLE001
            problems.append(f"{bundle.root}: router/escalation did not load: {e}")
    return problems


def _packed_problems(bundle: Bundle) -> list[str]:
    import hashlib

    import zstandard

    packed = bundle.path(bundle.packed)
    h = hashlib.sha256()
    try:
        with open(packed, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as reader:
            while block := reader.read(1 << 20):
                h.update(block)
    except (OSError, zstandard.ZstdError) as e:
        return [f"{packed}: does not decompress ({e})"]
    want = bundle.manifest["files"][bundle.base]["sha256"]
    if h.hexdigest() != want:
        return [f"{packed}: decompresses to sha256 {h.hexdigest()}, {bundle.base} is {want}"]
    return []


def write_bundle(out: Path, *, base_gguf: Path, packed: Path | None,
                 modifiers: dict[str, tuple[Path, dict]], router_dir: Path | None,
                 escalation: Path | None, thresholds: Path | None, teacher: dict | None,
                 serving: dict, card: str | None = None, extra: dict | None = None) -> dict:
    """Lay a bundle out in `out` (which must not exist) from its parts, then write the
    manifest over every file. `modifiers`: name -> (GGUF LoRA, its modifier.json);
    `teacher`: the endpoint's settings (an api_key_env name, never a key); `card`: the
    README.md text."""
    import shutil

    out = Path(out)
    out.mkdir(parents=True)
    shutil.copyfile(base_gguf, out / "model.gguf")
    system: dict[str, Any] = {"base": "model.gguf", "modifiers": {}, "serving": serving}
    if packed is not None:
        shutil.copyfile(packed, out / "model.gguf.zst")
        system["packed"] = "model.gguf.zst"
    for name, (path, info) in modifiers.items():
        if name in (BASE_ROUTE, LOCAL_ROUTE) or "/" in name:
            raise BundleError(f"{name!r} is not a modifier name")
        (out / "modifiers").mkdir(exist_ok=True)
        shutil.copyfile(path, out / "modifiers" / f"{name}.gguf")
        system["modifiers"][name] = {"file": f"modifiers/{name}.gguf", "info": info}
    if router_dir is not None:
        shutil.copytree(router_dir, out / "router")
        system["router"] = "router"
    for key, path in (("escalation", escalation), ("thresholds", thresholds)):
        if path is not None:
            shutil.copyfile(path, out / f"{key}.json")
            system[key] = f"{key}.json"
    if teacher is not None:
        if any("key" in k.lower() and k != "api_key_env" for k in teacher):
            raise BundleError(f"teacher settings {sorted(teacher)}: only an api_key_env "
                              f"name may refer to a key")
        (out / "teacher.json").write_text(json.dumps(teacher, indent=2, sort_keys=True) + "\n")
        system["teacher"] = "teacher.json"
    if card is not None:
        (out / "README.md").write_text(card)
    return write_manifest(out, system, extra)
