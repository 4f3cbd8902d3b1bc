"""Write workflow/schemas/config.schema.yaml from the library's parameter dataclasses.

Each stage's config section has exactly the fields of the dataclass its rule builds (types and
descriptions from the dataclass and its numpydoc "Attributes"), so the schema cannot drift from
the library: ``tests/test_config.py`` regenerates it and compares. Run after changing a dataclass:

    python tools/make_config_schema.py
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
import typing
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "workflow" / "schemas" / "config.schema.yaml"

# config section -> (module, dataclass or function, fields left out (set elsewhere), extra
# properties). For a function, its keyword-only parameters are the section's keys.
SECTIONS = {
    "simulation": ("msptycho.simulate.presets", "SimulationParameters", ("name",), {}),
    "drift": ("msptycho.drift", "correct_drift", (), {}),
    "parallax": ("msptycho.parallax", "parallax_fit", (), {}),
    "calibrate": ("msptycho.calibrate", "CalibrationSettings", ("seed",), {}),
    "reconstruct": ("msptycho.ptycho.parameters", "ReconstructionParameters", ("seed", "fft_workers"), {
        "engine": {"enum": ["cpu", "gpu"], "description": "cpu: Numba engine (rule reconstruct); gpu: CuPy engine (rule reconstruct_gpu)"},
    }),
    "strain": ("msptycho.lattice", "StrainSettings", (), {}),
    "core": ("msptycho.lattice", "CoreSettings", (), {}),
    "dislocations": ("msptycho.lattice", "DislocationSettings", (), {}),
    "surface": ("msptycho.lattice", "SurfaceSettings", (), {}),
    "figures": ("msptycho.figures.paper", "FigureSettings", (), {}),
}


def _type_schema(tp) -> dict:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        subs = [_type_schema(a) for a in args if a is not type(None)]
        schema = subs[0] if len(subs) == 1 else {"anyOf": subs}
        if type(None) in args:
            schema = {"anyOf": [schema, {"type": "null"}]}
        return schema
    if origin is tuple or tp is tuple:
        if args and args[-1] is not Ellipsis:
            return {"type": "array", "minItems": len(args), "maxItems": len(args),
                    "items": _type_schema(args[0])}
        return {"type": "array"}
    if origin is list:
        return {"type": "array"}
    if origin is typing.Literal:
        return {"enum": list(args)}
    return {}


def _descriptions(cls) -> dict[str, str]:
    """Field descriptions from the numpydoc Attributes section of ``cls``."""
    doc = cls.__doc__ or ""
    out, names, buf = {}, [], []
    for line in doc.splitlines():
        m = re.match(r"^    ([A-Za-z_][\w, ]*?) : (.+)$", line)
        if m:
            for n in names:
                out[n] = " ".join(buf).strip()
            names = [n.strip() for n in m.group(1).split(",")]
            buf = []
        elif names and line.startswith("        "):
            buf.append(line.strip())
        elif names and line.strip() and not line.startswith("    "):
            for n in names:
                out[n] = " ".join(buf).strip()
            names, buf = [], []
    for n in names:
        out[n] = " ".join(buf).strip()
    return out


def section_schema(module: str, cls_name: str, leave_out, extra) -> dict | None:
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError):
        return None
    hints = typing.get_type_hints(cls)
    desc = _descriptions(cls)
    if dataclasses.is_dataclass(cls):
        names = [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]
    else:  # a function: its keyword-only parameters
        sig = inspect.signature(cls)
        names = [(n, hints.get(n, type(p.default))) for n, p in sig.parameters.items()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY]
    props = {}
    for name, tp in names:
        if name in leave_out:
            continue
        s = _type_schema(tp)
        if desc.get(name):
            s["description"] = desc[name]
        props[name] = s
    props.update(extra)
    return {"type": "object", "additionalProperties": False,
            "description": (f"fields of {module}.{cls_name}" if dataclasses.is_dataclass(cls) else
                            f"keyword arguments of {module}.{cls_name}") + "; a key left out takes the library's default",
            "properties": dict(sorted(props.items()))}


CALIBRATION = {
    "type": "object", "additionalProperties": False,
    "description": "Calibration of a 4D-STEM file (workflow/schemas/datacube.md).",
    "properties": {
        "energy_eV": {"type": "number", "exclusiveMinimum": 0, "description": "beam energy, eV"},
        "semiangle_mrad": {"type": "number", "exclusiveMinimum": 0, "description": "convergence semi-angle, mrad"},
        "scan_step_A": {"type": "number", "exclusiveMinimum": 0, "description": "scan step, Angstrom"},
        "mrad_per_pixel": {"type": "number", "exclusiveMinimum": 0, "description": "detector sampling, mrad per pixel"},
        "scan_rotation_deg": {"type": "number", "description": "scan-to-detector rotation, degrees"},
        "detector_center_px": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2,
                               "description": "undiffracted beam (Qx, Qy), pixel indices"},
        "dose_e_per_A2": {"type": "number", "exclusiveMinimum": 0, "description": "electron dose, e/A^2"},
    },
}


def build() -> dict:
    defs = {"calibration": CALIBRATION}
    present = {}
    for name, (module, cls, leave_out, extra) in SECTIONS.items():
        s = section_schema(module, cls, leave_out, extra)
        if s is not None:
            defs[name] = s
            present[name] = s
    sample_props = {
        "source": {"enum": ["synthetic", "file"],
                   "description": "synthetic: made by the simulate rule; file: a 4D-STEM file on disk"},
        "preset": {"enum": ["pristine", "cracked", "paper"], "description": "simulator preset (synthetic samples)"},
        "format": {"enum": ["hdf5", "emd", "4dcamera", "npy", "canonical"], "description": "reader of a file sample"},
        "path": {"type": "string", "description": "path of the 4D-STEM file (file samples)"},
        "dataset": {"type": "string", "description": "dataset path inside an HDF5 file (hdf5, emd), or array key inside an .npz (npy)"},
        "calibration": {"$ref": "#/$defs/calibration"},
        "drop_flyback_column": {"type": "boolean", "description": "4dcamera: drop the last scan column (fly-back)"},
        "bin_factor": {"type": "integer", "minimum": 1, "description": "4dcamera: detector binning factor"},
        "scan_pair": {"type": "string", "description": "HDF5 file of an orthogonal HAADF scan pair (workflow/schemas/scan_pair.md), optional"},
        "vacuum_probe": {"type": "string", "description": "HDF5 file of a vacuum probe pattern (workflow/schemas/vacuum_probe.md), optional"},
    }
    if "simulation" in present:
        sample_props["simulation"] = {"$ref": "#/$defs/simulation"}
    defs["sample"] = {
        "type": "object", "additionalProperties": False, "required": ["source"],
        "properties": sample_props,
        "allOf": [
            {"if": {"properties": {"source": {"const": "synthetic"}}}, "then": {"required": ["preset"]}},
            {"if": {"properties": {"source": {"const": "file"}}}, "then": {"required": ["format", "path"]}},
        ],
    }
    props = {
        "samples": {"type": "object", "minProperties": 1,
                    "description": "sample name -> sample; names become folder names under results/",
                    "propertyNames": {"pattern": "^[A-Za-z0-9_-]+$"},
                    "additionalProperties": {"$ref": "#/$defs/sample"}},
        "seed": {"type": "integer", "minimum": 0,
                 "description": "random seed of every random step (simulation noise, batch order, optimiser)"},
    }
    for name in present:
        if name != "simulation":
            props[name] = {"$ref": f"#/$defs/{name}"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "msptycho workflow configuration",
        "description": ("Generated by tools/make_config_schema.py from the library's parameter dataclasses; "
                        "do not edit by hand. Every object forbids unknown keys; units are in the key names; "
                        "config/README.md documents each key."),
        "type": "object", "additionalProperties": False,
        "required": ["samples", "seed"],
        "$defs": defs, "properties": props,
    }


def render() -> str:
    return yaml.safe_dump(build(), sort_keys=False, width=100, allow_unicode=False)


README = ROOT / "config" / "README.md"
BEGIN, END = "<!-- generated by tools/make_config_schema.py: begin -->", "<!-- generated: end -->"


def _type_word(spec: dict) -> str:
    if "enum" in spec:
        return " / ".join(f"`{v}`" for v in spec["enum"])
    if "anyOf" in spec:
        return " or ".join(_type_word(s) for s in spec["anyOf"])
    return spec.get("type", "")


def render_readme_tables() -> str:
    schema = build()
    parts = [BEGIN]
    for name in SECTIONS:
        spec = schema["$defs"].get(name)
        if spec is None:
            continue
        where = f"`samples.<name>.{name}` (synthetic samples: overrides of the preset)" if name == "simulation" else f"`{name}`"
        parts.append(f"\n### {where}\n\n{spec['description']}.\n\n| key | type | meaning |\n| --- | --- | --- |")
        for key, p in spec["properties"].items():
            desc = p.get("description", "").replace("|", "/").replace("\n", " ")
            parts.append(f"| `{key}` | {_type_word(p)} | {desc} |")
    parts.append(END)
    return "\n".join(parts)


def render_readme() -> str:
    text = README.read_text()
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
    else:
        head, tail = text.rstrip("\n") + "\n\n## Stage parameters\n\n", "\n"
    return head + render_readme_tables() + tail


if __name__ == "__main__":
    text, readme = render(), render_readme()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == text and README.read_text() == readme else 1)
    OUT.write_text(text)
    README.write_text(readme)
    print(f"wrote {OUT} and {README}")
