"""Export the NAMM of a training run as a shareable folder (weights, config.json, model card), or upload it.

    python scripts/export_namm.py runs/smollm2-135m-passkey/seed0 namms/passkey-smollm2
    python scripts/export_namm.py runs/<run>/seed0/latest.pt namms/centre --params center
    python scripts/export_namm.py runs/<run>/seed0 namms/passkey --push-to-hub <org>/<name>

The source is a checkpoint file or a run directory (its best.pt, else latest.pt). `--params best` (default)
takes the best validated centre, `--params center` the last search mean. The folder loads with
`PretrainedNAMM.from_pretrained(<folder or hub id>)` and evaluates with `python evaluate.py checkpoint=<folder>`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from namm.pretrained import PARAMS_KINDS, export_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a training checkpoint (.pt) or run directory")
    parser.add_argument("out_dir", type=Path, help="the folder to write (created if needed)")
    parser.add_argument("--params", choices=PARAMS_KINDS, default="best", help="best validated centre or last mean")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the folder to this hub repo")
    parser.add_argument("--private", action="store_true", help="create the hub repo as private")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    artefact = export_checkpoint(args.checkpoint, args.out_dir, args.params)
    measured = artefact.measured
    summary = (
        f"validation fitness {measured['validation_fitness']:.4f}, retained ratio {measured['retained_ratio']:.3f}"
        if measured
        else "no validation recorded for these parameters"
    )
    print(f"Exported the NAMM of {args.checkpoint} ({args.params}, {summary}) to {args.out_dir}", flush=True)
    if args.push_to_hub:
        print(f"Uploaded: {artefact.push_to_hub(args.push_to_hub, private=args.private or None)}", flush=True)


if __name__ == "__main__":
    main()
