"""docker/Dockerfile parses, runs as a non-root user, and pins versions that setup.py's ranges accept."""

import ast
import re
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER"}
INSTRUCTIONS |= {"WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def _instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, with continuation lines joined and comments dropped."""
    text = (ROOT / "docker" / "Dockerfile").read_text()
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return [(item.split(None, 1)[0], item.split(None, 1)[1]) for item in logical]


def _setup_requirements() -> dict[str, Requirement]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "INSTALL_REQUIRES":
            reqs = [Requirement(r) for r in ast.literal_eval(node.value)]
            return {r.name.lower(): r for r in reqs}
    raise AssertionError("setup.py has no INSTALL_REQUIRES list")


def test_instructions_are_known_and_the_image_ends_non_root():
    instructions = _instructions()
    assert all(keyword in INSTRUCTIONS for keyword, _ in instructions), instructions
    keywords = [k for k, _ in instructions]
    assert keywords[0] == "FROM" and "ENTRYPOINT" in keywords
    users = [args for k, args in instructions if k == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")


def test_pinned_versions_satisfy_setup_py_and_cover_every_requirement():
    instructions = _instructions()
    base = instructions[0][1]
    torch_version = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-devel", base)
    assert torch_version, f"base image {base!r} is not a pinned CUDA devel PyTorch image"
    pins = {"torch": torch_version.group(1)}
    for keyword, args in instructions:
        if keyword == "RUN" and "pip install" in args:
            pins.update(
                (name.lower(), version) for name, version in re.findall(r"([A-Za-z0-9_.-]+)==([\w.]+)", args)
            )
    required = _setup_requirements()
    assert set(required) <= set(pins), f"not pinned in the Dockerfile: {sorted(set(required) - set(pins))}"
    for name, req in required.items():
        assert req.specifier.contains(pins[name]), (
            f"Dockerfile pins {name}=={pins[name]}, setup.py wants {req}"
        )


def test_copied_paths_exist():
    for keyword, args in _instructions():
        if keyword == "COPY":
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
