"""A run resumes only from checkpoint files this project wrote (issue 21.3): manifests of SHA-256, HMAC-signed."""

import hashlib
import json
import pathlib
import shutil

import pytest
import torch

from mtl.train.checkpoint_integrity import (
    KEY_ENV,
    KEY_ID_ENV,
    TRUST_ENV,
    CheckpointIntegrityError,
    checkpoint_key,
    key_id,
    signature,
    verify_checkpoint,
    write_manifest,
)
from mtl.train.local_session import train_locally

pytestmark = pytest.mark.timeout(300)

KEY = "0123456789abcdef" * 4
OTHER_KEY = "fedcba9876543210" * 4
MODEL_STATES = "state/mp_rank_00_model_states.pt"


class Touch:
    """Unpickling it creates `marker`: what a swapped-in checkpoint file could run instead."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def rank_dir(directory: pathlib.Path, rank: int, world_size: int, key: str | None = KEY) -> pathlib.Path:
    """What one rank leaves in its temp dir at a save: its shards, its stream position, its manifest."""
    (directory / "state").mkdir(parents=True)
    (directory / "state" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"optim %d" % rank)
    (directory / f"stream-rank{rank}.npz").write_bytes(b"stream %d" % rank)
    if rank == 0:
        (directory / MODEL_STATES).write_bytes(b"model")
        (directory / "latest").write_text("state")
    write_manifest(directory, rank, world_size, key.encode() if key else None)
    return directory


def merged(tmp_path: pathlib.Path, world_size: int = 2, key: str | None = KEY) -> pathlib.Path:
    """Every rank's dir copied into one checkpoint, as Ray Train persists it."""
    checkpoint = tmp_path / "checkpoint"
    for rank in range(world_size):
        shutil.copytree(rank_dir(tmp_path / f"rank{rank}", rank, world_size, key), checkpoint, dirs_exist_ok=True)
    return checkpoint


def resign(manifest: pathlib.Path, key: str | None) -> None:
    """Rewrite a manifest for the files as they are now: unsigned, or signed with `key`."""
    body = json.loads(manifest.read_text())
    body.pop("signature", None)
    directory = manifest.parent
    body["files"] = {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in body["files"]}
    if key:
        body["signature"] = signature(body, key.encode())
    manifest.write_text(json.dumps(body))


def refused(directory, key: str | None, path: str, problem: str) -> CheckpointIntegrityError:
    with pytest.raises(CheckpointIntegrityError, match=problem) as caught:
        verify_checkpoint(directory, key.encode() if key else None)
    assert caught.value.path == path and path in str(caught.value) and isinstance(caught.value, ValueError)
    return caught.value


def test_all_ranks_files_verify_and_a_changed_added_or_missing_file_is_refused_by_name(tmp_path):
    checkpoint = merged(tmp_path)
    assert verify_checkpoint(checkpoint, KEY.encode()) == "6 files verified, signed"
    (checkpoint / "state" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"optim 9")
    refused(checkpoint, KEY, "state/zero_pp_rank_1_mp_rank_00_optim_states.pt", "changed")

    checkpoint = merged(tmp_path / "added")
    (checkpoint / "state" / "extra.pt").write_bytes(b"x")
    refused(checkpoint, KEY, "state/extra.pt", "added: not in any rank's manifest")

    checkpoint = merged(tmp_path / "missing")
    (checkpoint / "stream-rank1.npz").unlink()
    refused(checkpoint, KEY, "stream-rank1.npz", "missing: listed in a manifest")


def test_a_rank_whose_manifest_and_files_are_gone_is_refused(tmp_path):
    checkpoint = merged(tmp_path)
    for name in ("manifest-rank1.json", "stream-rank1.npz", "state/zero_pp_rank_1_mp_rank_00_optim_states.pt"):
        (checkpoint / name).unlink()
    refused(checkpoint, KEY, "manifest-rank1.json", r"missing \(2 ranks saved\)")


def test_a_manifest_that_is_unreadable_or_of_a_rank_never_saved_is_refused(tmp_path):
    checkpoint = merged(tmp_path)
    shutil.copy(checkpoint / "manifest-rank1.json", checkpoint / "manifest-rank2.json")
    refused(checkpoint, None, "manifest-rank2.json", "not the manifest of rank 2 of the 2 ranks")
    (checkpoint / "manifest-rank2.json").unlink()
    (checkpoint / "manifest-rank1.json").write_text("{not json")
    refused(checkpoint, None, "manifest-rank1.json", "not a readable checkpoint manifest")


def test_with_the_key_an_unsigned_or_otherwise_signed_manifest_is_refused(tmp_path):
    checkpoint = merged(tmp_path)
    (checkpoint / MODEL_STATES).write_bytes(b"evil")
    resign(checkpoint / "manifest-rank0.json", key=None)
    refused(checkpoint, KEY, "manifest-rank0.json", "not signed")
    resign(checkpoint / "manifest-rank0.json", key=OTHER_KEY)
    refused(checkpoint, KEY, "manifest-rank0.json", "signature does not match")
    # What the key adds: without it, a manifest rewritten to fit the files passes (the documented limit) ...
    assert verify_checkpoint(checkpoint, None).endswith(
        "hashes checked, MTL_CHECKPOINT_KEY not set: signatures not checked"
    )
    # ... but a file changed behind its manifest is still caught.
    (checkpoint / MODEL_STATES).write_bytes(b"corrupt")
    refused(checkpoint, None, MODEL_STATES, "changed")


def test_a_checkpoint_from_before_manifests_is_refused_unless_named_to_be_trusted(tmp_path, monkeypatch):
    checkpoint = merged(tmp_path)
    for manifest in checkpoint.glob("manifest-rank*.json"):
        manifest.unlink()
    error = refused(checkpoint, KEY, "manifest-rank0.json", "missing: no checkpoint manifest")
    assert f"{TRUST_ENV}={checkpoint}" in str(error)
    monkeypatch.setenv(TRUST_ENV, str(tmp_path / "another-checkpoint"))
    refused(checkpoint, KEY, "manifest-rank0.json", "missing: no checkpoint manifest")
    monkeypatch.setenv(TRUST_ENV, str(checkpoint))
    assert verify_checkpoint(checkpoint, KEY.encode()).startswith("no manifest: trusted")


def test_a_worker_must_hold_the_drivers_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_ID_ENV, raising=False)
    assert checkpoint_key() is None
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(ValueError, match="fewer than 32"):
        checkpoint_key()
    monkeypatch.setenv(KEY_ENV, KEY)
    assert checkpoint_key() == KEY.encode()
    monkeypatch.setenv(KEY_ID_ENV, key_id(OTHER_KEY.encode()))
    with pytest.raises(ValueError, match="is another key in this worker's environment"):
        checkpoint_key()
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ValueError, match="is not set in this worker's environment"):
        checkpoint_key()


def test_ray_workers_get_the_key_id_never_the_key(monkeypatch):
    from mtl.train.driver import worker_env

    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv(TRUST_ENV, "/runs/r/checkpoint_1")
    env = worker_env(use_gpu=False)
    assert env[KEY_ID_ENV] == key_id(KEY.encode()) and env[TRUST_ENV] == "/runs/r/checkpoint_1"
    assert KEY not in json.dumps(env)


STEPS = {"max_steps": 2, "checkpoint_every": 2, "eval_every": 2, "log_every": 2}


@pytest.fixture
def signed_run(make_config, monkeypatch):
    """A two-step local run, its checkpoint signed; returns a function that resumes it to step 4."""
    monkeypatch.setenv(KEY_ENV, KEY)
    first = train_locally(make_config(train=STEPS))
    checkpoint = pathlib.Path(first["run_dir"]) / "checkpoints" / "step_2"
    return checkpoint, lambda: train_locally(make_config(train={**STEPS, "max_steps": 4}))


def test_an_untampered_checkpoint_resumes(signed_run, capsys):
    checkpoint, resume = signed_run
    manifest = json.loads((checkpoint / "manifest-rank0.json").read_text())
    assert MODEL_STATES in manifest["files"] and "stream-rank0.npz" in manifest["files"] and manifest["signature"]
    assert resume()["steps"] == 4
    output = capsys.readouterr().out
    assert "resumed from checkpoint at step 2" in output and "files verified, signed" in output


def test_a_pickle_swapped_into_a_checkpoint_is_refused_by_name_and_never_unpickled(signed_run, tmp_path):
    checkpoint, resume = signed_run
    live = tmp_path / "payload-is-live"
    torch.load(_save(Touch(live), tmp_path / "probe.pt"), weights_only=False)
    assert live.exists(), "the payload runs when torch unpickles it"

    marker = tmp_path / "pwned"
    _save(Touch(marker), checkpoint / MODEL_STATES)
    with pytest.raises(CheckpointIntegrityError, match=f"{MODEL_STATES}: changed") as caught:
        resume()
    assert caught.value.path == MODEL_STATES and not marker.exists()
    for key, problem in ((None, "not signed"), (OTHER_KEY, "signature does not match")):
        resign(checkpoint / "manifest-rank0.json", key)  # the attacker also rewrites the manifest
        with pytest.raises(CheckpointIntegrityError, match=f"manifest-rank0.json: {problem}"):
            resume()
        assert not marker.exists()


def _save(obj, path: pathlib.Path) -> pathlib.Path:
    torch.save(obj, path)
    return path
