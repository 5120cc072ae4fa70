"""A mixture's run identity: its sources' data and their names and weights; a resume onto changed weights
is refused naming them unless train.resume_allow_changed has `weights`."""

import pytest

from pretrain.checkpoint.identity import check_resume_identity, config_changes, run_identity
from pretrain.checkpoint.record import CheckpointError
from pretrain.data.mixture import MixtureSource
from tests.helpers.rows import ArrayReader, make_rows

WEB, BOOKS = (
    ArrayReader(make_rows(40, 16, seed=1), "web rows"),
    ArrayReader(make_rows(10, 16, seed=2), "books"),
)


class Model:
    def shape(self):
        return {"hidden_size": 128}


def identity(weights, names=("web", "books")):
    source = MixtureSource(list(zip(names, (WEB, BOOKS), strict=True)), weights, seed=0)
    return run_identity("bert", Model(), source, seq_len=16, seed=0)


def test_changed_weights_are_refused_by_name_unless_allowed():
    saved, changed = identity([0.75, 0.25]), identity([0.5, 0.5])
    assert saved["data.weights"] == [["web", 0.75], ["books", 0.25]]
    assert check_resume_identity("ckpt", saved, identity([0.75, 0.25]), allowed=()) == []
    with pytest.raises(CheckpointError) as refused:
        check_resume_identity("ckpt", saved, changed, allowed=())
    message = str(refused.value)
    assert "data.sources (names and weights) [['web', 0.75], ['books', 0.25]] -> [['web', 0.5]" in message
    assert "train.resume_allow_changed=[weights]" in message and "data (build" not in message
    assert check_resume_identity("ckpt", saved, changed, allowed=("weights",))  # accepted, and logged
    renamed = identity([0.75, 0.25], names=("web", "novels"))
    with pytest.raises(CheckpointError, match=r"allow_changed=\[weights\]"):
        check_resume_identity("ckpt", saved, renamed, allowed=())


def test_another_source_is_another_data_identity_and_moved_paths_are_harmless():
    other = MixtureSource([("web", WEB), ("books", WEB)], [0.75, 0.25], seed=0)
    assert run_identity("bert", Model(), other, seq_len=16, seed=0)["data"] != identity([0.75, 0.25])["data"]
    saved = {"data": {"path": None, "sources": [{"path": "/old/web", "weight": 1.0, "name": "web"}]}}
    moved = {"data": {"path": None, "sources": [{"path": "/new/web", "weight": 1.0, "name": "web"}]}}
    assert config_changes(saved, moved) == []
