"""Convert the paper's checkpoint files into files qaclims loads: `convert <kind> SRC DST`.

Kinds (README, "Reproducing the paper"):
- `blip`: the original BLIP VQA `.pth` -> a `save_pretrained` folder at 480 px, tokenizer
  with BLIP's [DEC]/[ENC] ids (`models.vqa`);
- `openai-clip`: OpenAI's TorchScript `ViT-L-14.pt` -> open_clip safetensors
  (`models.clip.pretrained`);
- `ovseg`: OV-Seg's detectron2 checkpoint -> safetensors of the image tower and mask
  prompts (`models.ovseg`);
- `cam`: the released `res50_cam.pth` -> a CAM network file (`cam.released`).
Converters are imported only for the kind asked, so one kind's dependencies never load
for another.
"""

from __future__ import annotations

import argparse
from pathlib import Path

KINDS = ("blip", "openai-clip", "ovseg", "cam")


def add_arguments(p: argparse.ArgumentParser) -> None:
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    blip = kinds.add_parser("blip", help="original BLIP VQA .pth -> save_pretrained folder")
    blip.add_argument(
        "--tokenizer",
        required=True,
        help="a bert-base-uncased tokenizer: local folder or cached hub id "
        "(e.g. Salesforce/blip-vqa-capfilt-large)",
    )
    blip.add_argument(
        "--image-size", type=int, default=None, help="default: what the position embedding holds"
    )
    clip = kinds.add_parser("openai-clip", help="OpenAI TorchScript CLIP -> open_clip safetensors")
    clip.add_argument("--architecture", default="ViT-L-14-quickgelu", help="open_clip model name")
    clip.add_argument(
        "--config-json", type=Path, default=None, help="open_clip config of a custom architecture"
    )
    kinds.add_parser("ovseg", help="OV-Seg checkpoint -> safetensors image tower + mask prompts")
    kinds.add_parser("cam", help="released res50_cam.pth -> CAM network file")
    for sub in kinds.choices.values():
        sub.add_argument("src", type=Path, help="the file to convert")
        sub.add_argument("dst", type=Path, help="where to write the converted file or folder")
        sub.add_argument(
            "--trust-pickle",
            action="store_true",
            help="unpickle a file that is not weights-only (runs code from it: trusted files only)",
        )


def main(args: argparse.Namespace) -> None:
    if args.kind == "blip":
        from qaclims.converters.blip import convert_blip

        convert_blip(
            args.src,
            args.dst,
            tokenizer=args.tokenizer,
            image_size=args.image_size,
            trust_pickle=args.trust_pickle,
        )
    elif args.kind == "openai-clip":
        from qaclims.converters.openai_clip import convert_openai_clip

        convert_openai_clip(
            args.src,
            args.dst,
            architecture=args.architecture,
            config_json=args.config_json,
            trust_pickle=args.trust_pickle,
        )
    elif args.kind == "ovseg":
        from qaclims.converters.ovseg import convert_ovseg

        convert_ovseg(args.src, args.dst, trust_pickle=args.trust_pickle)
    else:
        from qaclims.converters.cam import convert_cam

        convert_cam(args.src, args.dst, trust_pickle=args.trust_pickle)
