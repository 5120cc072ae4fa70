"""Config files as input (issue 20, items 9-11): what is refused before anything walks the YAML, each as
one ConfigError line naming the file or key, through the loader, `mlm-train` and `mlm-launch` alike."""

from __future__ import annotations

import os
import threading
import time

import pytest

from pretrain.config import ConfigError, check_trainable, load_config, read_config_dict
from pretrain.config.files import MAX_ALIASES, MAX_BASE_DEPTH, MAX_BYTES, MAX_NESTING

MINIMAL = "run_dir: runs/x\ndata:\n  path: shards\nmodel:\n  preset: tiny\n"


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """The classic alias bomb: `levels` lists each holding `width` aliases of the one before (9^9 strings)."""
    lines = ["a0: &a0 [" + ",".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]")
    return MINIMAL + "\n".join(lines) + f"\ndeepspeed: {{x: *a{levels - 1}}}\n"


def _refused(path, overrides=(), seconds: float = 5.0) -> str:
    """The ConfigError message load_config raises for `path`, which must come within `seconds`."""
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load_config(str(path), list(overrides))
    assert time.monotonic() - started < seconds
    message = str(err.value)
    assert "\n" not in message
    return message


def test_an_alias_bomb_is_refused_naming_the_file(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs())
    assert len(bomb.read_bytes()) < 2000
    message = _refused(bomb, seconds=1.0)
    assert message.startswith(f"{bomb}: YAML expands to more than 100000 values")


def test_merge_keys_that_double_at_each_level_are_counted_too(tmp_path):
    lines = ["m0: &m0 {a: 1, b: 2}"]
    for i in range(1, 30):
        lines.append(f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: 1}}")
    bomb = tmp_path / "merge.yaml"
    bomb.write_text(MINIMAL + "\n".join(lines) + "\n")
    assert "YAML expands to more than" in _refused(bomb, seconds=1.0)


def test_too_many_aliases_are_refused(tmp_path):
    many = tmp_path / "many.yaml"
    many.write_text(MINIMAL + "x: &x 1\ny: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n")
    assert _refused(many).startswith(f"{many}: more than {MAX_ALIASES} YAML aliases")
    few = tmp_path / "few.yaml"  # a handful of anchors and aliases is fine
    few.write_text(MINIMAL.replace("runs/x", "&dir runs/x") + "data: {path: *dir}\n")
    assert load_config(str(few)).data.path == "runs/x"


@pytest.mark.parametrize("levels", [MAX_NESTING + 1, 5000])
def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path, levels):
    deep = tmp_path / "deep.yaml"
    deep.write_text(MINIMAL + "deepspeed: {x: " + "[" * levels + "]" * levels + "}\n")
    assert _refused(deep).startswith(f"{deep}: YAML nested deeper than {MAX_NESTING} levels")


def test_nesting_made_deep_by_aliases_is_refused(tmp_path):
    lines = ["d0: &d0 [[[[[[[[[[1]]]]]]]]]]"]
    for i in range(1, 12):
        lines.append(f"d{i}: &d{i} [[[[[[[[[[*d{i - 1}]]]]]]]]]]")
    deep = tmp_path / "deep.yaml"
    deep.write_text(MINIMAL + "\n".join(lines) + "\n")
    assert "nests deeper than 64 levels once its aliases are expanded" in _refused(deep)


def test_a_recursive_alias_is_refused(tmp_path):
    loop = tmp_path / "loop.yaml"
    loop.write_text(MINIMAL + "deepspeed: &d {x: *d}\n")
    assert "a YAML alias refers to a mapping or list that contains it" in _refused(loop)


def test_an_alias_bomb_in_an_override_is_refused(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(MINIMAL)
    value = billion_laughs().split("\n", 5)[-1].replace("\n", ", ").rstrip(", ")
    with pytest.raises(ConfigError, match=r"^override 'deepspeed.x=.*YAML expands to more than"):
        read_config_dict(str(cfg), ["deepspeed.x={" + value + "}"])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_by_name_without_hanging(tmp_path):
    fifo = tmp_path / "cfg.yaml"
    os.mkfifo(fifo)
    result: list = []
    reader = threading.Thread(target=lambda: result.append(_try(fifo)), daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # unblock the reader before failing
        with open(fifo, "w"):
            pass
        pytest.fail("the loader blocked on a FIFO")
    assert result == [f"{fifo}: is a FIFO (named pipe), not a regular file; pass --config a YAML file"]


def _try(path) -> str:
    try:
        load_config(str(path))
    except ConfigError as exc:
        return str(exc)
    return "accepted"


def test_a_directory_is_not_reported_as_missing(tmp_path):
    assert _refused(tmp_path) == f"{tmp_path}: is a directory, not a regular file; pass --config a YAML file"
    assert _refused(tmp_path / "nope.yaml") == f"config file not found: {tmp_path / 'nope.yaml'}"


def test_a_huge_file_is_refused_unread(tmp_path):
    huge = tmp_path / "huge.yaml"
    huge.write_text(MINIMAL + "deepspeed: {x: '" + "x" * MAX_BYTES + "'}\n")
    assert _refused(huge) == f"{huge}: larger than {MAX_BYTES} bytes; a config file is small, is this one?"


def test_a_file_that_is_not_utf8_names_the_byte_offset(tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"run_dir: caf\xe9\ndata: {path: d}\n")
    assert _refused(latin1) == (
        f"{latin1}: not UTF-8 text: byte 0xe9 at offset 12 (invalid continuation byte); "
        "save the config as UTF-8"
    )
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes(MINIMAL.encode("utf-16"))
    assert _refused(utf16).startswith(f"{utf16}: not UTF-8 text: byte 0xff at offset 0")


def test_a_long_base_chain_is_bounded_not_a_recursion_error(tmp_path):
    (tmp_path / "c0.yaml").write_text(MINIMAL)
    for i in range(1, 1500):
        (tmp_path / f"c{i}.yaml").write_text(f"base: c{i - 1}.yaml\ntrain: {{seed: {i}}}\n")
    top = tmp_path / "c1499.yaml"
    message = _refused(top)
    assert message == (
        f"{top}: the `base:` chain is longer than {MAX_BASE_DEPTH} files (the next would be "
        f"{tmp_path / 'c1467.yaml'}); flatten it into fewer files"
    )
    # A chain of exactly MAX_BASE_DEPTH files still loads, the nearest file winning.
    assert load_config(str(tmp_path / f"c{MAX_BASE_DEPTH - 1}.yaml")).train.seed == MAX_BASE_DEPTH - 1


def test_a_base_cycle_through_several_files_is_named(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    message = _refused(tmp_path / "a.yaml")
    assert "cycle" in message and "a.yaml -> " in message and "b.yaml -> " in message


@pytest.mark.parametrize(
    ("text", "key", "point"),
    [
        ('run_dir: "runs/\\0x"\ndata: {path: d}\n', "run_dir", "U+0000"),
        ('run_dir: r\ndata: {path: "sha\\x07rds"}\n', "data.path", "U+0007"),
        ('run_dir: "a\\tb"\ndata: {path: d}\n', "run_dir", "U+0009"),
        ('run_dir: r\ndata: {path: d}\ntrain: {resume: "ckpt\\e[0m"}\n', "train.resume", "U+001B"),
        ('run_dir: "r\\x85"\ndata: {path: d}\n', "run_dir", "U+0085"),
    ],
)
def test_a_control_character_in_a_string_key_is_refused_naming_the_key(tmp_path, text, key, point):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    message = _refused(cfg)
    assert message.startswith(f"{cfg}: {key}: holds control character {point} at position ")
    assert message.endswith("a path or name cannot hold one, remove it")
    assert key in _refused(tmp_path / "run.yaml", [f"{key}=ok\x00"])


def test_a_nul_in_the_base_path_is_refused_naming_the_file(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text('base: "other\\0.yaml"\n' + MINIMAL)  # was "config file not found"
    assert _refused(cfg).startswith(f"{cfg}: base: holds control character U+0000 at position 5")


def test_warmup_longer_than_the_run_is_refused_for_training(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(MINIMAL + "train: {max_steps: 100}\noptim: {warmup_steps: 10000}\n")
    loaded = load_config(str(cfg))  # a saved config.yaml of an older run still loads (export, fine-tuning)
    with pytest.raises(ConfigError) as err:
        check_trainable(loaded, str(cfg))
    assert str(err.value) == (
        f"{cfg}: optim.warmup_steps (10000) is larger than train.max_steps (100): the run would end at "
        "0.01 x optim.lr, still warming up; lower optim.warmup_steps (e.g. optim.warmup_steps=10) or raise "
        "train.max_steps"
    )
    check_trainable(load_config(str(cfg), ["optim.warmup_steps=100"]))  # equal is fine


def test_the_documented_limits_are_the_code_s():
    from pretrain.config.files import MAX_NODES
    from pretrain.config.reference import PAGE

    intro = PAGE.read_text(encoding="utf-8").split("<!-- Generated below")[0]
    for text in (
        f"**{MAX_ALIASES} aliases**",
        f"**{MAX_NESTING} levels**",
        f"**{MAX_NODES:,} values**",
        f"**{MAX_BASE_DEPTH} files**",
        f"**{MAX_BYTES // 2**20} MiB**",
    ):
        assert text in intro


# ----------------------------------------------- the same files through `mlm-train` and `mlm-launch`


def _bad_files(tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (config path, what its one line must say)."""
    cases = {}
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs().replace("runs/x", str(tmp_path / "run")))
    cases["alias bomb"] = (str(bomb), f"{bomb}: YAML expands to more than")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"run_dir: caf\xe9\ndata: {path: d}\n")
    cases["not UTF-8"] = (str(latin1), f"{latin1}: not UTF-8 text: byte 0xe9 at offset 12")
    (tmp_path / "c0.yaml").write_text(MINIMAL)
    for i in range(1, 1500):
        (tmp_path / f"c{i}.yaml").write_text(f"base: c{i - 1}.yaml\n")
    cases["base chain"] = (str(tmp_path / "c1499.yaml"), "the `base:` chain is longer than 32 files")
    nul = tmp_path / "nul.yaml"
    nul.write_text('run_dir: "run\\0x"\ndata: {path: d}\n')
    cases["NUL in run_dir"] = (str(nul), f"{nul}: run_dir: holds control character U+0000")
    warm = tmp_path / "warm.yaml"
    warm.write_text(MINIMAL + "train: {max_steps: 10}\noptim: {warmup_steps: 50}\n")
    cases["warmup"] = (str(warm), "optim.warmup_steps (50) is larger than train.max_steps (10)")
    return cases


@pytest.mark.parametrize("case", ["alias bomb", "not UTF-8", "base chain", "NUL in run_dir", "warmup"])
def test_bad_files_are_one_line_in_mlm_train_and_mlm_launch(tmp_path, capsys, monkeypatch, case):
    from launcher.cli import main as launch_main
    from pretrain.__main__ import main as train_main

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    path, expected = _bad_files(tmp_path)[case]
    assert train_main(["--config", path]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mlm-train: error: ") and expected in err[-1]
    assert "Traceback" not in "\n".join(err)
    argv = ["slurm", "--nodes", "1", "--cpu", "--dry-run", "--", "--config", path]
    assert launch_main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing rendered
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("mlm-launch: error: ") and expected in captured.err
