"""The conda envs pin exactly what pyproject.toml pins, and every rule names an env that exists."""
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENVS = sorted((ROOT / "envs").glob("*.yaml"))


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_pins() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra in meta.get("optional-dependencies", {}).values():
        reqs += extra
    pins = {}
    for r in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", r.strip())
        assert m, f"pyproject.toml: requirement {r!r} is not pinned exactly (name==version)"
        pins[_norm(m.group(1))] = m.group(2)
    return pins


def env_pins(path: Path) -> dict[str, str]:
    spec = yaml.safe_load(path.read_text())
    pins = {}
    for dep in spec["dependencies"]:
        entries = dep["pip"] if isinstance(dep, dict) else [dep]
        for e in entries:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(==|=)([A-Za-z0-9_.+\-]+)", e.strip())
            assert m, f"{path.name}: dependency {e!r} is not pinned to one exact version"
            pins[_norm(m.group(1))] = m.group(3)
    return pins


def test_pyproject_pins_are_exact():
    assert pyproject_pins()


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_pins_agree_with_pyproject(env):
    ours = pyproject_pins()
    pins = env_pins(env)
    assert pins.get("python", "").startswith("3.11"), f"{env.name}: python must be pinned to 3.11.x"
    for name, version in pins.items():
        if name in ours:
            assert version == ours[name], f"{env.name}: {name}={version} but pyproject.toml pins {ours[name]}"


def test_every_rule_has_an_existing_env():
    rule_files = sorted((ROOT / "workflow" / "rules").glob("*.smk"))
    used = set()
    for f in rule_files:
        text = f.read_text()
        n_rules = len(re.findall(r"^\s*rule \w+:", text, flags=re.M))
        envs = re.findall(r"conda:\s*\n\s*\"([^\"]+)\"", text)
        assert len(envs) == n_rules, f"{f.name}: {n_rules} rules but {len(envs)} conda: directives"
        for e in envs:
            p = (f.parent / e).resolve()
            assert p.is_file(), f"{f.name}: conda env {e} does not exist"
            used.add(p)
    unused = {p.resolve() for p in ENVS} - used
    assert not unused, f"envs not used by any rule: {sorted(q.name for q in unused)}"
