"""The README documents every setting and task, and opens with the two set-up commands."""

from pathlib import Path

from grokjax.sweep import describe_settings
from grokjax.tasks import TASK_NAMES

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_setting_and_task_is_documented():
    for row in describe_settings():
        assert f"`{row['section']}.{row['key']}`" in README, row["key"]
    for name in TASK_NAMES:
        assert f"`{name}`" in README, name


def test_readme_opens_with_the_two_commands():
    block = README.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(block) == 2
    assert block[0].endswith("grokjax run sweeps/quickstart.toml")
    assert block[1].endswith("python -m pytest -q")
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert block[1] in ci
