"""Fails unless every Autobahn case in the report directory passed.

OK, NON-STRICT and INFORMATIONAL count as passing (as in the Autobahn
reports themselves); anything else (FAILED, UNIMPLEMENTED, missing) fails.
Usage: autobahn_verdict.py REPORT_DIR
"""
import collections
import glob
import json
import os
import sys

PASS = {"OK", "NON-STRICT", "INFORMATIONAL"}


def main(outdir: str) -> int:
    cases = [f for f in glob.glob(os.path.join(outdir, "*case_*.json"))]
    if not cases:
        print(f"no Autobahn case reports in {outdir}", file=sys.stderr)
        return 1
    tally = collections.Counter()
    bad = []
    for path in sorted(cases):
        with open(path) as f:
            d = json.load(f)
        verdict = (d.get("behavior"), d.get("behaviorClose"))
        tally[verdict] += 1
        if verdict[0] not in PASS or verdict[1] not in PASS:
            bad.append(f"{d.get('id')}: {verdict}")
    print(f"{len(cases)} cases: " + ", ".join(f"{k[0]}/{k[1]}={v}" for k, v in sorted(tally.items())))
    if len(cases) < 240:
        print(f"expected about 247 cases, got {len(cases)}", file=sys.stderr)
        return 1
    if bad:
        print("failing cases:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
