"""The README's commands, .ci/run and environment.yml agree with pyproject.toml."""

import re
import tomllib

from diffuse_edu import config

ROOT = config.PROJECT_ROOT


def _pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["dependencies"]) | set(project["optional-dependencies"]["test"])


def _environment_pip_requirements() -> set[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    reqs = set()
    for line in lines[start + 1:]:
        match = re.match(r"^\s{6,}- (.+)$", line)
        if not match:
            break
        reqs.add(match.group(1).strip())
    return reqs - {"-e ."}


def test_environment_yml_names_the_same_requirements():
    assert _environment_pip_requirements() == _pyproject_requirements()


def test_environment_yml_installs_the_project_and_pins_python():
    text = (ROOT / "environment.yml").read_text()
    assert "- -e ." in text and "python=3.11" in text


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    assert blocks[0].endswith("jupyter lab notebooks/"), "the first command starts the course"
    test_command = blocks[1]
    assert "pytest" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_pyproject_admits_the_machine_torch():
    reqs = _pyproject_requirements()
    assert "torch>=2.4,<2.15" in reqs and "torchvision>=0.19,<0.30" in reqs
