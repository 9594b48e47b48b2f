"""Fails unless every Autobahn case in the report directory passed.

OK, NON-STRICT and INFORMATIONAL count as passing (as in the Autobahn
reports themselves); anything else (FAILED, UNIMPLEMENTED, missing) fails.
Cases of sections 12 and 13 (permessage-deflate) also fail unless the
server's 101 response accepted the extension, so a server that declines
compression cannot pass them by echoing uncompressed.
Usage: autobahn_verdict.py REPORT_DIR [MIN_CASES]
"""
import collections
import glob
import json
import os
import sys

PASS = {"OK", "NON-STRICT", "INFORMATIONAL"}


def main(outdir: str, min_cases: int) -> int:
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
        elif str(d.get("id", "")).startswith(("12.", "13.")) and (
            "permessage-deflate" not in d.get("httpResponse", "")
        ):
            bad.append(f"{d.get('id')}: permessage-deflate was not negotiated")
    print(f"{len(cases)} cases: " + ", ".join(f"{k[0]}/{k[1]}={v}" for k, v in sorted(tally.items())))
    if len(cases) < min_cases:
        print(f"expected at least {min_cases} cases, got {len(cases)}", file=sys.stderr)
        return 1
    if bad:
        print("failing cases:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 240))
