"""Checkpoint integrity: a run resumes only from checkpoint files this project wrote (issue 21.3).

DeepSpeed's `load_checkpoint` ends in `torch.load(weights_only=False)`: a file swapped on the shared run storage
would run its pickled code when a run resumes. So every rank, once its part of a checkpoint is written, adds a
manifest of its files' SHA-256 (`manifest-rank<r>.json`), HMAC-SHA256-signed with `MTL_CHECKPOINT_KEY` when that is
set. Ranks write into their own directories, which Ray Train merges into one checkpoint; `verify_checkpoint` checks
the merged directory against every rank's manifest before DeepSpeed or torch opens a file in it.

Without the key the hashes catch corruption and accidental swaps, not someone who can rewrite a manifest as well.
The trust model (what the key protects and what it does not) is in docs/trust.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from pathlib import Path, PurePosixPath

from mtl.errors import UserError

KEY_ENV = "MTL_CHECKPOINT_KEY"  # the signing key (a Kubernetes Secret in every Ray pod's environment)
KEY_ID_ENV = "MTL_CHECKPOINT_KEY_ID"  # the driver's key id, handed to Ray workers instead of the key itself
TRUST_ENV = "MTL_TRUST_UNVERIFIED_CHECKPOINT"  # one checkpoint directory without manifests to resume from anyway
MANIFEST = "manifest-rank{rank}.json"
MANIFEST_NAME = re.compile(r"manifest-rank(\d+)\.json")  # in the checkpoint's top directory
MIN_KEY_CHARS = 32  # signed manifests sit on shared storage: a short key could be guessed offline
FORMAT = 1


class CheckpointIntegrityError(UserError):
    """A checkpoint file that is not as its manifest says (changed, added, missing, unsigned, signed otherwise).

    A `UserError` (a `ValueError`): jobs print it as one line; Ray workers do not retry it (it would only repeat)."""

    def __init__(self, directory: str | Path, path: str, problem: str):
        self.directory, self.path, self.problem = str(directory), path, problem
        super().__init__(f"refusing to resume from checkpoint {directory}: {path}: {problem}")


def checkpoint_key() -> bytes | None:
    """The signing key from `MTL_CHECKPOINT_KEY`, or None when unset.

    Where the driver handed over its key id (`MTL_CHECKPOINT_KEY_ID`, Ray workers), this process's key must be the
    same key: a worker without it would otherwise write unsigned checkpoints, and refuse the driver's signed ones."""
    value = os.environ.get(KEY_ENV)
    key = value.encode() if value else None
    if key is not None and len(value) < MIN_KEY_CHARS:
        raise UserError(f"{KEY_ENV}: {len(value)} characters, fewer than {MIN_KEY_CHARS} (e.g. openssl rand -hex 32)")
    expected = os.environ.get(KEY_ID_ENV)
    if expected and (key is None or not hmac.compare_digest(key_id(key), expected)):
        where = "is not set" if key is None else "is another key"
        raise UserError(
            f"{KEY_ENV} {where} in this worker's environment, but the driver signs checkpoints with key id {expected}: "
            "set the same key in the environment of every Ray node (e.g. from one Kubernetes Secret in every pod)"
        )
    return key


def key_id(key: bytes) -> str:
    """A short public name of a key (an HMAC of a fixed text): it says which key without giving it away."""
    return hmac.new(key, b"mtl checkpoint key id", hashlib.sha256).hexdigest()[:16]


def sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def signature(body: dict, key: bytes) -> str:
    """HMAC-SHA256 of the manifest's canonical JSON (sorted keys, no spaces), its `signature` left out."""
    canonical = json.dumps({k: v for k, v in body.items() if k != "signature"}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


def files_under(directory: Path) -> list[str]:
    """Every file below `directory`, as relative POSIX paths."""
    return sorted(path.relative_to(directory).as_posix() for path in directory.rglob("*") if not path.is_dir())


def manifest_rank(relative: str) -> int | None:
    """The rank whose manifest `relative` is, or None for any other file."""
    match = MANIFEST_NAME.fullmatch(relative)
    return int(match.group(1)) if match else None


def write_manifest(directory: str | Path, rank: int, world_size: int, key: bytes | None) -> Path:
    """Write `manifest-rank<rank>.json`: the relative path and SHA-256 of every file in `directory` (this rank's
    part of a checkpoint, all of it written), signed with `key` when there is one."""
    directory = Path(directory)
    files = {name: sha256(directory / name) for name in files_under(directory) if manifest_rank(name) is None}
    body: dict = {"format": FORMAT, "rank": rank, "world_size": world_size, "files": files}
    if key is not None:
        body["signature"] = signature(body, key)
    path = directory / MANIFEST.format(rank=rank)
    path.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    return path


def read_rank_manifest(directory: Path, name: str, key: bytes | None) -> dict:
    """One rank's manifest, its signature checked first when there is a key."""

    def fail(problem: str) -> CheckpointIntegrityError:
        return CheckpointIntegrityError(directory, name, problem)

    try:
        body = json.loads((directory / name).read_text())
        files, world_size = body["files"], int(body["world_size"])
        if not isinstance(files, dict) or world_size < 1:
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise fail(f"not a readable checkpoint manifest ({type(error).__name__})") from None
    if key is not None:
        if "signature" not in body:
            raise fail(f"not signed, and {KEY_ENV} is set: written without the key, or replaced")
        if not hmac.compare_digest(str(body["signature"]).encode(), signature(body, key).encode()):
            raise fail(f"signature does not match {KEY_ENV}: signed with another key, or changed since")
    for relative in files:
        path = PurePosixPath(relative)
        if path.is_absolute() or ".." in path.parts or manifest_rank(relative) is not None:
            raise fail(f"lists {relative!r}, not a checkpoint file inside the directory")
    return {**body, "world_size": world_size}


def verify_checkpoint(directory: str | Path, key: bytes | None) -> str:
    """Refuse (`CheckpointIntegrityError`, naming the file) a checkpoint whose files are not exactly those its ranks'
    manifests list with those SHA-256, or, with `key`, whose manifests are not signed with it. Reads no file but to
    hash it. Returns how far it is trusted, for the resume message.

    A checkpoint without manifests (written before them) is refused unless `MTL_TRUST_UNVERIFIED_CHECKPOINT` names
    this very directory."""
    directory = Path(directory)
    present = files_under(directory)
    names = [name for name in present if manifest_rank(name) is not None]
    if not names:
        trusted = os.environ.get(TRUST_ENV)
        if trusted and Path(trusted).resolve() == directory.resolve():
            return f"no manifest: trusted because {TRUST_ENV} names it"
        raise CheckpointIntegrityError(
            directory,
            MANIFEST.format(rank=0),
            "missing: no checkpoint manifest (written before manifests, or they were removed). If you know this "
            f"checkpoint is one your runs wrote, set {TRUST_ENV}={directory} to resume from it once; its next "
            "checkpoints get manifests",
        )
    manifests = {name: read_rank_manifest(directory, name, key) for name in names}
    world_size = manifests[names[0]]["world_size"]
    for rank in range(world_size):
        if MANIFEST.format(rank=rank) not in manifests:
            raise CheckpointIntegrityError(directory, MANIFEST.format(rank=rank), f"missing ({world_size} ranks saved)")
    expected: dict[str, str] = {}
    for name, body in manifests.items():
        rank = manifest_rank(name)
        if body["world_size"] != world_size or body.get("rank") != rank or rank >= world_size:
            problem = f"not the manifest of rank {rank} of the {world_size} ranks {names[0]} says saved"
            raise CheckpointIntegrityError(directory, name, problem)
        for relative, digest in body["files"].items():
            if expected.setdefault(relative, digest) != digest:
                raise CheckpointIntegrityError(directory, relative, "listed by two ranks' manifests with other hashes")
    for relative in present:
        if relative not in expected and manifest_rank(relative) is None:
            raise CheckpointIntegrityError(directory, relative, "added: not in any rank's manifest")
    for relative, digest in sorted(expected.items()):
        path = directory / relative
        if not path.is_file():
            raise CheckpointIntegrityError(directory, relative, "missing: listed in a manifest but not there")
        if sha256(path) != digest:  # hashes are no secret: a plain comparison
            raise CheckpointIntegrityError(directory, relative, "changed: its SHA-256 is not the manifest's")
    signed = "signed" if key is not None else f"hashes checked, {KEY_ENV} not set: signatures not checked"
    return f"{len(expected)} files verified, {signed}"
