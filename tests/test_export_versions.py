"""Exports never vanish under a reader: each export is a new version directory published by an atomic symlink."""

import os

import torch

from mtl.inference.export import publish
from mtl.inference.exported_model import ExportedModel
from tests.conftest import make_tiny_export


def test_retraining_under_the_same_name_keeps_the_version_a_reader_holds(tiny_backbone, tmp_path):
    legacy = tmp_path / "run" / "export"
    legacy.mkdir(parents=True)
    (legacy / "mtl.json").write_text("{}")  # an export written before versions existed
    first = make_tiny_export(tmp_path / "run" / "export", tiny_backbone)
    assert first.is_symlink() and not os.path.isabs(os.readlink(first))  # relative: the run dir can move
    moved = [path for path in (tmp_path / "run" / "versions").iterdir() if "unversioned" in path.name]
    assert len(moved) == 1 and (moved[0] / "mtl.json").read_text() == "{}"  # moved aside, not deleted
    held = first.resolve()  # what a Serve replica or batch job pins when it starts
    reader = ExportedModel.load(held)
    before = reader.embed(["a sentence"])

    torch.manual_seed(123)
    second = make_tiny_export(tmp_path / "run" / "export", tiny_backbone)  # new random heads, same name
    assert second.resolve() != held and held.is_dir()
    assert sorted(path.name for path in held.iterdir()) == sorted(path.name for path in second.resolve().iterdir())
    assert (ExportedModel.load(held).embed(["a sentence"]) == before).all()  # the held version is unchanged
    assert len([p for p in (tmp_path / "run" / "versions").iterdir()]) == 3


def test_publish_replaces_the_pointer_in_one_rename(tmp_path):
    versions = [tmp_path / "versions" / name for name in ("a", "b")]
    for version in versions:
        version.mkdir(parents=True)
        (version / "mtl.json").write_text(version.name)
    publish(versions[0], tmp_path / "export")
    assert (tmp_path / "export" / "mtl.json").read_text() == "a"
    publish(versions[1], tmp_path / "export")
    assert (tmp_path / "export" / "mtl.json").read_text() == "b"
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no temporary links left
