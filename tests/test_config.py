"""The config schema is generated from the library's dataclasses and the default config obeys it."""
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def load_schema():
    return yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())


def test_schema_is_up_to_date_with_the_dataclasses():
    r = subprocess.run([sys.executable, str(ROOT / "tools/make_config_schema.py"), "--check"], cwd=ROOT)
    assert r.returncode == 0, "workflow/schemas/config.schema.yaml is stale: run python tools/make_config_schema.py"


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "config").glob("*.yaml")))
def test_shipped_configs_validate(name):
    cfg = yaml.safe_load((ROOT / "config" / name).read_text())
    jsonschema.validate(cfg, load_schema())


def test_every_schema_key_is_documented():
    doc = (ROOT / "config/README.md").read_text()
    schema = load_schema()
    missing = []
    for section, spec in schema["$defs"].items():
        for key in spec.get("properties", {}):
            if f"`{key}`" not in doc:
                missing.append(f"{section}.{key}")
    assert not missing, f"config/README.md does not document: {missing}"


def test_unknown_keys_are_rejected_everywhere():
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    schema = load_schema()
    for section in [k for k, v in cfg.items() if isinstance(v, dict) and k != "samples"]:
        bad = {**cfg, section: {**cfg[section], "no_such_key_A": 1}}
        with pytest.raises(jsonschema.ValidationError, match="no_such_key_A"):
            jsonschema.validate(bad, schema)
