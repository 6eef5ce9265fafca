"""README's commands are the ones CI runs, and its options table is the one config.py generates."""
import os

from conftest import ROOT


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def test_ci_runs_the_readme_test_command():
    readme, ci = read("README.md"), read(".ci/run")
    blocks = [b.split("```")[0].strip() for b in readme.split("```bash\n")[1:3]]
    assert "train.py" in blocks[0] and "predict.py" in blocks[0]
    assert "pytest" in blocks[1]
    assert blocks[1] in ci


def test_readme_options_table_is_current():
    from config import options_markdown
    assert options_markdown() in read("README.md")
