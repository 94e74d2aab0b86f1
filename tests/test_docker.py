"""docker/Dockerfile, linted with a Dockerfile parser (no Docker engine runs on the test machines)."""

from pathlib import Path

from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[1]


def parsed():
    parser = DockerfileParser(fileobj=open(ROOT / "docker" / "Dockerfile", "rb"))
    return parser, [(i["instruction"], i["value"]) for i in parser.structure]


def test_base_image_is_cuda_pytorch():
    parser, _ = parsed()
    assert parser.baseimage.startswith("pytorch/pytorch:") and "cuda" in parser.baseimage


def test_installs_the_project_from_the_repo_and_copies_what_the_recipes_need():
    _, rows = parsed()
    copies = [value.split()[0] for instruction, value in rows if instruction == "COPY"]
    assert {"pyproject.toml", "seq2seq", "recipes", "data", "tokenizers"} <= set(copies)
    runs = [value for instruction, value in rows if instruction == "RUN"]
    assert any("pip install" in r and '".[speech]"' in r for r in runs)
    for name in copies:
        assert (ROOT / name).exists(), name


def test_runs_as_a_non_root_user_with_the_recipe_as_entry():
    _, rows = parsed()
    users = [value for instruction, value in rows if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    entry = [value for instruction, value in rows if instruction == "ENTRYPOINT"][-1]
    assert "accelerate" in entry and "recipes/wmt14_enfr.py" in entry


def test_dockerignore_keeps_the_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored)
