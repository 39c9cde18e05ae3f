"""How often the dependency-free T2I-CompBench++ prompt readings (lpo.evals.metrics.compbench_text)
agree with spaCy's (lpo.evals.metrics.compbench_spacy) on the official validation prompts.

Usage: python scripts/compbench_parser_agreement.py PROMPT_DIR [--site-packages DIR] [--model NAME] [--out FILE]

PROMPT_DIR holds the official ``examples/dataset/{category}_val.txt`` files; ``--site-packages``
adds an environment where spaCy and en_core_web_sm are installed (appended to sys.path, so this
environment's own packages win). Per category and reading: the share of prompts whose reading
is identical under both parsers, and a few that differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

READINGS = {  # category -> the readings its official scorer uses
    "color": ("blip_questions",), "shape": ("blip_questions",), "texture": ("blip_questions",),
    "spatial": ("spatial_objects",), "3d_spatial": ("spatial_objects",),
    "complex": ("blip_questions", "complex_spatial_objects", "remove_adjectives"),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompts", type=Path)
    parser.add_argument("--site-packages", default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--model", default="en_core_web_sm", help="the spaCy pipeline to load (a package name)")
    args = parser.parse_args(argv)
    if args.site_packages:
        sys.path.append(args.site_packages)
    import lpo.evals.metrics.compbench_text as rules
    from lpo.evals.metrics.compbench_spacy import spacy_reading

    spacy = spacy_reading(args.model)
    if spacy is None:
        raise SystemExit("spaCy's en_core_web_sm is not importable; pass --site-packages of an environment that has it")
    result = {"spacy": spacy.tag, "categories": {}}
    for category, readings in READINGS.items():
        prompts = [p.strip() for p in (args.prompts / f"{category}_val.txt").read_text().splitlines() if p.strip()]
        rows = {}
        for reading in readings:
            def read(parser, prompt, reading=reading, category=category):
                if reading == "spatial_objects":
                    vocabulary = rules.SPATIAL_3D if category == "3d_spatial" else rules.SPATIAL_2D
                    return getattr(parser, reading)(prompt, rules.find_relation(prompt, vocabulary))
                return getattr(parser, reading)(prompt)
            differ = [(p, read(rules, p), read(spacy, p)) for p in prompts if read(rules, p) != read(spacy, p)]
            rows[reading] = {"prompts": len(prompts), "agree": len(prompts) - len(differ),
                             "agreement": round(1 - len(differ) / len(prompts), 4),
                             "examples": [{"prompt": p, "rules": r, "spacy": s} for p, r, s in differ[:5]]}
            print(f"{category:11s} {reading:24s} {rows[reading]['agreement']:.3f} ({rows[reading]['agree']}/{len(prompts)})",
                  flush=True)
        result["categories"][category] = rows
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=list))


if __name__ == "__main__":
    main()
