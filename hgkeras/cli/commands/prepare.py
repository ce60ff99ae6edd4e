"""``hgkeras prepare {mpii,flic,coco}``: annotations + images -> sharded TFRecords with a manifest."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="convert MPII, FLIC or COCO annotations and images to sharded TFRecords",
        description="Read an MPII (release .mat, Torch annot .h5, HRNet .json) or FLIC (examples.mat, "
        "Torch annot .h5) or COCO (person_keypoints_*.json: people with keypoints, not crowd) "
        "annotation file and write sharded TFRecords plus manifest.json, several shards "
        "at a time. Missing, truncated or undecodable images are skipped and listed in the manifest "
        "(JPEGs with data after the end marker, such as phone motion photos, are kept); no usable "
        "image at all is an error. The manifest is marked incomplete first and written last, so "
        "readers refuse an interrupted run's folder; running again cleans up after it.",
    )
    parser.add_argument("dataset", choices=["mpii", "flic", "coco"])
    parser.add_argument("--annotations", required=True, help="annotation file")
    parser.add_argument("--images", required=True, help="directory of the images")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--shards", type=int, help="shards per split (default ~1024 records each)")
    parser.add_argument(
        "--split", action="append", choices=["train", "valid", "test"],
        help="write only this split (repeatable; default all)",
    )  # fmt: skip
    parser.add_argument(
        "--observer-centric", action="store_true",
        help="FLIC: swap left/right labels of people seen from behind (the paper's evaluation)",
    )  # fmt: skip
    parser.add_argument(
        "--valid-annotations",
        help="annotation file whose people form the validation split (e.g. MPII valid.h5 with the "
        "release .mat)",
    )
    parser.add_argument(
        "--input-shape", default="256x256",
        help="COCO: model input HEIGHTxWIDTH the crop boxes are made for (256x256 or 256x192; "
        "default 256x256)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int,
        help="shards written at the same time (default: the machine's cores)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hgkeras.data.prepare import prepare_dataset

    if args.observer_centric and args.dataset != "flic":
        raise ValueError("--observer-centric applies to FLIC only")
    manifest = prepare_dataset(
        args.dataset,
        args.annotations,
        args.images,
        args.out,
        shards=args.shards,
        splits=args.split,
        observer_centric=args.observer_centric,
        valid_annotations=args.valid_annotations,
        workers=args.workers,
        progress=not args.no_progress,
        input_shape=args.input_shape,
    )
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['records']} records in {len(info['shards'])} shard(s)")
    skipped = manifest["skipped_images"]
    if skipped:
        print(f"skipped {len(skipped)} record(s) with missing or unreadable images (see manifest)")
    if manifest["skipped_annotations"]:
        print(f"skipped {len(manifest['skipped_annotations'])} annotation record(s) (see manifest)")
    print(f"wrote {args.out}/manifest.json")
    return 0
