"""data.sources: a mixture is described by the data section alone; data.path and data.sources are exclusive
(a base's data.path is cleared with `path: null`); names, weights and temperature are checked."""

import pytest

from pretrain.config import ConfigError, config_from_dict, load_config


def data(**section):
    return config_from_dict({"run_dir": "r", "data": section}).data


def test_sources_get_names_from_their_paths_and_keep_their_weights():
    cfg = data(
        sources=[{"path": "/d/web/", "weight": 0.75}, {"path": "/d/books", "weight": 0.25, "name": "b"}]
    )
    assert [(s.name, s.weight) for s in cfg.sources] == [("web", 0.75), ("b", 0.25)]
    assert cfg.path is None and cfg.is_mixture
    assert not data(path="/d/web").is_mixture


def test_a_base_data_path_is_cleared_with_null(tmp_path):
    (tmp_path / "base.yaml").write_text("run_dir: r\ndata: {path: /d/web}\n")
    (tmp_path / "mix.yaml").write_text(
        "base: base.yaml\ndata:\n  path: null\n  sources: [{path: /d/web}, {path: /d/books}]\n"
    )
    assert [s.name for s in load_config(str(tmp_path / "mix.yaml")).data.sources] == ["web", "books"]
    (tmp_path / "both.yaml").write_text("base: base.yaml\ndata:\n  sources: [{path: /d/books}]\n")
    with pytest.raises(
        ConfigError, match=r"data.path \(/d/web\) and data.sources are exclusive; set data.path: null"
    ):
        load_config(str(tmp_path / "both.yaml"))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({}, "data.path is required .* or data.sources"),
        (
            {"sources": [{"path": "/a/web"}, {"path": "/b/web"}]},
            r"data.sources\[0\] and data.sources\[1\] are both named 'web'",
        ),
        ({"sources": [{"path": "/a", "weight": 1}, {"path": "/b"}]}, "give every source a weight, or none"),
        ({"sources": [{"path": "/a", "weight": 0}]}, "the weight of /a must be > 0"),
        ({"sources": [{"path": "/a", "weight": 1}], "temperature": 2}, "only applies to weights from sizes"),
        ({"sources": [{"path": "/a"}], "temperature": 0}, "data.temperature must be > 0"),
        ({"sources": [{"path": "/a", "name": "web/en"}]}, "source name 'web/en' .* must be 1-64 letters"),
        ({"sources": [{"weight": 1}]}, "every source needs a path"),
        (
            {"sources": [{"path": "/a", "wieght": 1}]},
            r"unknown key data.sources\[0\].wieght; did you mean data.sources\[0\].weight",
        ),
    ],
)
def test_bad_sources_are_refused_in_one_line(section, message):
    with pytest.raises(ConfigError, match=message) as refused:
        config_from_dict({"run_dir": "r", "data": section})
    assert "\n" not in str(refused.value)
