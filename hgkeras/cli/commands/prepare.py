"""``hgkeras prepare FORMAT``: annotations + images -> sharded TFRecords with a manifest."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="convert MPII, FLIC, COCO, DeepLabCut or YOLO-pose annotations to sharded TFRecords",
        description="Read annotations and write sharded TFRecords plus manifest.json (with the pose "
        "spec), several shards at a time. Formats: mpii (release .mat, Torch annot .h5, HRNet "
        ".json), flic (examples.mat, Torch annot .h5), coco (any COCO keypoint file: people, "
        "animals, objects; the category's keypoints and skeleton make the pose spec), dlc (a "
        "DeepLabCut project: --annotations is its folder or config.yaml) and yolo (an Ultralytics "
        "YOLO-pose dataset: --annotations is its data.yaml). Missing, truncated or undecodable "
        "images are skipped and listed in the manifest (JPEGs with data after the end marker, such "
        "as phone motion photos, are kept); no usable image at all is an error. The manifest is "
        "marked incomplete first and written last, so readers refuse an interrupted run's folder; "
        "running again cleans up after it. See docs/own-keypoints.md.",
    )
    parser.add_argument("dataset", choices=["mpii", "flic", "coco", "dlc", "yolo"], metavar="FORMAT",
                        help="mpii, flic, coco, dlc or yolo")  # fmt: skip
    parser.add_argument(
        "--annotations", required=True,
        help="annotation file (mpii, flic, coco), DeepLabCut project folder or config.yaml (dlc), "
        "data.yaml (yolo)",
    )  # fmt: skip
    parser.add_argument(
        "--images",
        help="folder the images are named relative to (needed for mpii, flic, coco; default: the "
        "project folder for dlc, the dataset root for yolo)",
    )
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
        help="annotation file whose people form the validation split (MPII: e.g. valid.h5 with the "
        "release .mat; COCO: the validation keypoint file)",
    )
    parser.add_argument(
        "--valid-images", help="COCO: the validation images' folder (default: --images)"
    )
    parser.add_argument(
        "--valid-fraction", type=float,
        help="coco, dlc, yolo without a validation split: this fraction of the images becomes "
        "'valid' (deterministic: images ranked by the SHA-1 of their name)",
    )  # fmt: skip
    parser.add_argument(
        "--category", help="coco: the keypoint category (id or name); yolo: the class"
    )
    parser.add_argument(
        "--flip-pairs",
        help="coco, dlc, yolo: left/right keypoint pairs LEFT:RIGHT,... by name or index ('' for "
        "none); default: YOLO's flip_idx, else found by name (left/right, l_/r_, L/R)",
    )
    parser.add_argument(
        "--pose", help="coco, dlc, yolo: a pose spec JSON file to use instead of the format's"
    )
    parser.add_argument(
        "--input-shape", default="256x256",
        help="model input HEIGHTxWIDTH the crop boxes are made for (coco, dlc, yolo; e.g. 256x256 "
        "or 256x192; default 256x256)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int,
        help="shards written at the same time (default: the machine's cores)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hgkeras.data.prepare import USER_FORMATS, flip_pair_names, prepare_dataset
    from hgkeras.spec import get_pose

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
        valid_images=args.valid_images,
        valid_fraction=args.valid_fraction,
        category=args.category,
        flip_pairs=args.flip_pairs,
        pose=args.pose,
        workers=args.workers,
        progress=not args.no_progress,
        input_shape=args.input_shape,
    )
    if args.dataset in USER_FORMATS:
        spec = get_pose(manifest["pose"])
        print(f"pose {spec.name!r}: {spec.num_joints} keypoints {', '.join(spec.joint_names)}")
        how = {"names": "found by name", "given": "given", "spec": "from the spec file",
               "flip_idx": "from flip_idx"}[manifest["flip_pairs_from"]]  # fmt: skip
        print(f"flip pairs ({how}): {flip_pair_names(spec)}")
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['records']} records in {len(info['shards'])} shard(s)")
    skipped = manifest["skipped_images"]
    if skipped:
        print(f"skipped {len(skipped)} record(s) with missing or unreadable images (see manifest)")
    if manifest["skipped_annotations"]:
        print(f"skipped {len(manifest['skipped_annotations'])} annotation record(s) (see manifest)")
    print(f"wrote {args.out}/manifest.json")
    return 0
