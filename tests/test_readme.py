"""The README opens with the two set-up commands, and CI runs the second one."""

from pathlib import Path

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    block = README.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(block) == 2
    assert block[0].endswith("grokjax run sweeps/quickstart.toml")
    assert block[1].endswith("python -m pytest -q")
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert block[1] in ci
